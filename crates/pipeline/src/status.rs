//! The kiosk's health file (`fashion-kiosk.json` in `[metrics] folder`): what it runs, whether
//! its camera and display work, what its scans came to. The kiosk writes it; `check --json`
//! prints it; the uplink publishes it.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// The health file's name in the folder.
pub const JSON_FILE: &str = "fashion-kiosk.json";

/// The kiosk's health at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// This build's version.
    pub version: String,
    /// When the service started (RFC 3339); `None` from `check`.
    pub started: Option<String>,
    /// When this was written (RFC 3339).
    pub updated: String,
    /// `starting`, `running`, `stopped`, or `failed: ` and why the service could not start.
    pub status: String,
    pub model: Option<ModelHealth>,
    pub catalogue: Option<CatalogueHealth>,
    /// When the scene was calibrated (RFC 3339), if it is.
    pub calibrated: Option<String>,
    pub camera: Part,
    pub display: Part,
    pub scans: ScanCounts,
    /// When the last scan finished (RFC 3339).
    pub last_scan: Option<String>,
    /// Catalogue reloads refused since the start (the previous catalogue was kept).
    pub reload_failures: u64,
}

/// The model that embeds the frames.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelHealth {
    pub name: String,
    /// SHA-256 of the model file.
    pub fingerprint: String,
}

/// The catalogue table searched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogueHealth {
    pub items: usize,
    /// The table's content id (its header checksum).
    pub fingerprint: String,
}

/// A device: up or not, and what it is or why it is down.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Part {
    pub up: bool,
    pub detail: String,
}

impl Part {
    pub fn up(detail: impl Into<String>) -> Self {
        Part {
            up: true,
            detail: detail.into(),
        }
    }
    pub fn down(detail: impl Into<String>) -> Self {
        Part {
            up: false,
            detail: detail.into(),
        }
    }
}

/// Scans since the start, by outcome.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScanCounts {
    pub ok: u64,
    pub nothing: u64,
    pub error: u64,
}

/// Now, as RFC 3339 with milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// Reads a health file the kiosk wrote.
pub fn read(folder: &Path) -> Result<Health> {
    let path = folder.join(JSON_FILE);
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} is not valid", path.display()))
}
