//! The command-line arguments the binaries share: the model to embed with (`--model`) and the
//! kiosk's config file with what the command line overrides in it (`--config`, `--table`, …).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::config::{Config, Overrides};
use kiosk_vision::form;
use kiosk_vision::model::Embedder;

#[derive(Args)]
pub struct ModelArg {
    /// Model manifest (default: the bundled int8 fashion ResNet50); `auto`: the bundled model or
    /// its fp32 twin, whichever runs faster on this CPU.
    #[arg(long, value_name = "MANIFEST")]
    pub model: Option<PathBuf>,
}

impl ModelArg {
    /// The manifest given (`auto` resolved for this CPU), else the bundled default.
    pub fn path(&self) -> Result<PathBuf> {
        Ok(form::resolve(self.model.as_deref())?.manifest)
    }

    pub fn load(&self) -> Result<Embedder> {
        Embedder::load(&self.path()?)
    }

    /// The model, or its twin where that runs faster on this CPU (logged): what builds a table,
    /// which both read.
    pub fn load_fastest_form(&self) -> Result<Embedder> {
        let pick = form::pick(&self.path()?, form::has_int8_dot_product())?;
        tracing::info!(
            "embedding with {} ({})",
            pick.manifest.display(),
            pick.reason
        );
        Embedder::load(&pick.manifest)
    }
}

/// The default config path of an installed kiosk.
pub const DEFAULT_CONFIG: &str = "/etc/fashion-kiosk/kiosk.toml";

#[derive(Args)]
pub struct ConfigArgs {
    /// The kiosk's TOML config.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Catalogue table (overrides `catalogue.table`).
    #[arg(long, value_name = "TABLE")]
    pub table: Option<PathBuf>,
    /// Model manifest (overrides `model.manifest`).
    #[arg(long, value_name = "MANIFEST")]
    pub model: Option<PathBuf>,
    /// Scan log file (overrides `scan_log.path`).
    #[arg(long, value_name = "FILE")]
    pub scan_log: Option<PathBuf>,
    /// Write every screen as a PNG into DIR (switches to the simulated display).
    #[arg(long, value_name = "DIR")]
    pub screens: Option<PathBuf>,
}

impl ConfigArgs {
    pub fn load(&self) -> Result<Config> {
        Config::load(
            &self.config,
            &Overrides {
                table: self.table.clone(),
                model: self.model.clone(),
                scan_log: self.scan_log.clone(),
                screens: self.screens.clone(),
            },
        )
    }
}
