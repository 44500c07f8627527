//! `fashion-kiosk check`: the installer's first command. Tries the model, the table, the camera,
//! the scene calibration, the trigger, the display and the scan log of a config, and reports each
//! as ok or failing.

use std::time::Instant;

use anyhow::Result;

use crate::config::Config;
use crate::device::{self, Screen};
use crate::kiosk::load_table;
use crate::model::Embedder;
use crate::scanlog::ScanLog;

/// One checked part.
pub struct Finding {
    pub part: &'static str,
    pub outcome: Result<String, String>,
}

fn finding(part: &'static str, outcome: Result<String>) -> Finding {
    Finding {
        part,
        outcome: outcome.map_err(|e| {
            let message = format!("{e:#}");
            if message.contains("Device or resource busy") {
                format!("{message} (is the service running? `systemctl stop fashion-kiosk` first)")
            } else {
                message
            }
        }),
    }
}

fn describe_region(region: Option<[u32; 4]>) -> String {
    match region {
        Some([x, y, w, h]) => format!("the region {w}×{h} at ({x}, {y})"),
        None => "what stands out near the middle of the frame".into(),
    }
}

/// Checks every part of `config`; a failing part does not stop the others.
pub fn check(config: &Config) -> Vec<Finding> {
    let mut findings = Vec::new();
    let manifest = config.model.manifest_path();
    let embedder = Embedder::load(&manifest);
    findings.push(finding(
        "model",
        embedder
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e:#}"))
            .map(|e| {
                format!(
                    "{} ({}, {})",
                    e.manifest().name,
                    manifest.display(),
                    e.fingerprint().short()
                )
            }),
    ));
    let table = match &embedder {
        Ok(embedder) => load_table(embedder, &config.catalogue.table)
            .map(|t| format!("{} ({} items)", config.catalogue.table.display(), t.len())),
        Err(_) => Err(anyhow::anyhow!(
            "{}: not checked without a model",
            config.catalogue.table.display()
        )),
    };
    findings.push(finding("catalogue", table));
    findings.push(finding(
        "camera",
        device::open_camera(&config.camera).and_then(|mut camera| {
            let start = Instant::now();
            let frame = camera.capture()?;
            Ok(format!(
                "{}: {}×{} frame in {:.0} ms",
                camera.describe(),
                frame.width(),
                frame.height(),
                start.elapsed().as_secs_f64() * 1000.0
            ))
        }),
    ));
    findings.push(finding(
        "scene",
        match (&config.scene.reference, config.scene.region) {
            (Some(path), region) => crate::foreground::load_reference(path).map(|r| match r {
                Some(r) => format!(
                    "calibrated ({}, {}×{})",
                    path.display(),
                    r.width(),
                    r.height()
                ),
                None => format!(
                    "not calibrated ({} missing: run `fashion-kiosk calibrate`); using {}",
                    path.display(),
                    describe_region(region)
                ),
            }),
            (None, region) => Ok(format!(
                "no reference configured; using {}",
                describe_region(region)
            )),
        },
    ));
    findings.push(finding(
        "trigger",
        device::open_trigger(&config.trigger, config.kiosk.debounce()).map(|t| match t {
            Some(t) => format!("{} (and SIGUSR1)", t.describe()),
            None => "SIGUSR1 only".into(),
        }),
    ));
    findings.push(finding(
        "display",
        device::open_display(&config.display).and_then(|d| match d {
            Some(mut d) => {
                d.show(&Screen::Message {
                    title: "Check".into(),
                    detail: "fashion-kiosk check: display ok".into(),
                })?;
                Ok(d.describe())
            }
            None => Ok("none (headless)".into()),
        }),
    ));
    findings.push(finding(
        "scan log",
        match &config.scan_log.path {
            Some(path) => ScanLog::open(path, config.scan_log.max_bytes, config.scan_log.keep)
                .map(|log| format!("{} (writable)", log.path().display())),
            None => Ok("off".into()),
        },
    ));
    findings
}
