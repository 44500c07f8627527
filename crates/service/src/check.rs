//! `fashion-kiosk check`: the installer's first command. Tries the model, the table, the camera,
//! the scene calibration, a scan of the camera's frame through the kiosk's pipeline, the trigger,
//! the display and the scan log of a config, and reports each as ok or failing.

use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use image::RgbImage;

use crate::device::camera::CameraControl;
use crate::device::Camera;
use crate::device::{self, Screen};
use crate::scanlog::ScanLog;
use kiosk_pipeline::config::{Config, OutfitConfig, RecommendConfig};
use kiosk_pipeline::outfit::Outfits;
use kiosk_pipeline::pipeline::{Pipeline, Store};
use kiosk_pipeline::recommend::{stock::Stock, trends::Trends};
use kiosk_pipeline::status::{self, CatalogueHealth, Health, ModelHealth, Part};
use kiosk_table::catalogue::Table;
use kiosk_vision::calibration::{Calibration, ControlSetting};
use kiosk_vision::colour;
use kiosk_vision::model::Embedder;

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

/// The scene calibration: what it holds, and whether it fits the camera's frames (size, the
/// configured region).
fn scene_finding(
    config: &Config,
    calibration: Result<&Option<Calibration>, &anyhow::Error>,
    frame: Option<&RgbImage>,
) -> Result<String> {
    let region = config.scene.region;
    if let (Some([x, y, w, h]), Some(frame)) = (region, frame) {
        if x + w > frame.width() || y + h > frame.height() {
            bail!(
                "scene.region = [{x}, {y}, {w}, {h}] reaches outside the camera's {}×{} frame",
                frame.width(),
                frame.height()
            );
        }
    }
    let Some(path) = &config.scene.reference else {
        return Ok(format!(
            "no reference configured; using {}",
            describe_region(region)
        ));
    };
    let Some(calibration) = calibration.map_err(|e| anyhow!("{e:#}"))? else {
        return Ok(format!(
            "not calibrated ({} missing: run `fashion-kiosk calibrate`); using {}",
            path.display(),
            describe_region(region)
        ));
    };
    let image = calibration.scene.image();
    if let Some(frame) = frame {
        if frame.dimensions() != image.dimensions() {
            bail!(
                "{} is {}×{} but the camera gives {}×{} frames: recalibrate",
                path.display(),
                image.width(),
                image.height(),
                frame.width(),
                frame.height()
            );
        }
    }
    let noise = if calibration.scene.noise().is_some() {
        ", noise map"
    } else {
        ""
    };
    let taken = calibration
        .taken
        .as_deref()
        .map(|t| format!(", taken {t}"))
        .unwrap_or_default();
    let detail = format!(
        "calibrated ({}, {}×{}, {} frames{noise}{taken})",
        path.display(),
        image.width(),
        image.height(),
        calibration.frames,
    );
    Ok(match &calibration.card {
        Some(card) => format!(
            "{detail}; white card gains {:.2} {:.2} {:.2}",
            card.gains[0], card.gains[1], card.gains[2]
        ),
        None if config.scene.card => {
            bail!("{detail}, but without the white card: recalibrate with it")
        }
        None => format!("{detail}; no white card (colour uncorrected)"),
    })
}

/// The camera controls calibration locked: their values now, set again as the kiosk sets them
/// when it opens the camera, and read back.
fn controls_finding(camera: &mut dyn Camera, stored: &[ControlSetting]) -> Result<String> {
    let value =
        |controls: &[CameraControl], id| controls.iter().find(|c| c.id == id).map(|c| c.value);
    let now = camera.controls()?;
    let drifted: Vec<String> = stored
        .iter()
        .filter(|s| value(&now, s.id) != Some(s.value))
        .map(|s| match value(&now, s.id) {
            Some(v) => format!("{} {v} (stored {})", s.name, s.value),
            None => format!("{} missing (stored {})", s.name, s.value),
        })
        .collect();
    camera.set_controls(stored)?;
    let after = camera.controls()?;
    let unheld: Vec<String> = stored
        .iter()
        .filter(|s| value(&after, s.id) != Some(s.value))
        .map(|s| {
            format!(
                "{} reads {:?}, set {}",
                s.name,
                value(&after, s.id),
                s.value
            )
        })
        .collect();
    if !unheld.is_empty() {
        bail!(
            "the camera does not hold its calibrated controls: {}",
            unheld.join(", ")
        );
    }
    let held: Vec<String> = stored
        .iter()
        .map(|s| format!("{} {}", s.name, s.value))
        .collect();
    Ok(if drifted.is_empty() {
        format!("as calibrated: {}", held.join(", "))
    } else {
        format!(
            "had drifted ({}); set back: {}",
            drifted.join(", "),
            held.join(", ")
        )
    })
}

/// Checks every part of `config`; a failing part does not stop the others. Also returns the
/// kiosk's health as these checks found it (the kiosk's own health file has the same shape).
pub fn check(config: &Config) -> (Vec<Finding>, Health) {
    let mut findings = Vec::new();
    let mut health = Health {
        version: env!("CARGO_PKG_VERSION").into(),
        updated: status::now_rfc3339(),
        status: "checked".into(),
        ..Health::default()
    };
    let embedder = check_model(config, &mut findings, &mut health);
    let table = check_catalogue(config, embedder.as_ref(), &mut findings, &mut health);
    if let (Some(recommend), Ok(table)) = (&config.recommend, &table) {
        findings.extend(store_findings(recommend, table));
    }
    if let Some(settings) = &config.outfit {
        findings.push(finding(
            "outfits",
            outfits_finding(settings, table.as_ref().ok()),
        ));
    }
    let calibration = config
        .scene
        .reference
        .as_deref()
        .map(Calibration::load)
        .transpose()
        .map(Option::flatten);
    let mut camera = device::open_camera(&config.camera);
    let frame = capture(&mut camera, &mut findings);
    health.camera = part(findings.last());
    if let Ok(Some(calibration)) = &calibration {
        health.calibrated = calibration.taken.clone();
    }
    findings.push(finding(
        "scene",
        scene_finding(config, calibration.as_ref(), frame.as_ref()),
    ));
    if let (Ok(Some(calibration)), Ok(camera)) = (&calibration, &mut camera) {
        if !calibration.controls.is_empty() {
            findings.push(finding(
                "controls",
                controls_finding(camera.as_mut(), &calibration.controls),
            ));
        }
    }
    if let (Some(embedder), Ok(table), Some(frame)) = (&embedder, table, &frame) {
        findings.push(finding("look-up", look_up(config, embedder, table, frame)));
    }
    if let Some(rect) = config.scene.white_patch {
        findings.push(finding(
            "patch",
            match &frame {
                Some(frame) => colour::read_patch(frame, rect)
                    .map(|c| format!("{rect:?} reads R G B {:.0} {:.0} {:.0}", c[0], c[1], c[2])),
                None => Err(anyhow!("not checked without a camera frame")),
            },
        ));
    }
    check_outputs(config, &mut findings, &mut health);
    (findings, health)
}

/// The model the config picks, loaded: its finding and health; the embedder when it loaded.
fn check_model(
    config: &Config,
    findings: &mut Vec<Finding>,
    health: &mut Health,
) -> Option<Embedder> {
    let loaded = config
        .model
        .pick()
        .and_then(|pick| Ok((Embedder::load(&pick.manifest)?, pick)));
    findings.push(finding(
        "model",
        loaded
            .as_ref()
            .map_err(|e| anyhow!("{e:#}"))
            .map(|(e, pick)| {
                format!(
                    "{} ({}, {}; {})",
                    e.manifest().name,
                    pick.manifest.display(),
                    e.fingerprint().short(),
                    pick.reason
                )
            }),
    ));
    let (embedder, _) = loaded.ok()?;
    health.model = Some(ModelHealth {
        name: embedder.manifest().name.clone(),
        fingerprint: embedder.fingerprint().to_string(),
    });
    Some(embedder)
}

/// The catalogue table, loaded for `embedder`'s model: its finding and health.
fn check_catalogue(
    config: &Config,
    embedder: Option<&Embedder>,
    findings: &mut Vec<Finding>,
    health: &mut Health,
) -> Result<Table> {
    let path = &config.catalogue.table;
    let table = match embedder {
        Some(embedder) => embedder.load_table(path),
        None => Err(anyhow!("{}: not checked without a model", path.display())),
    };
    findings.push(finding(
        "catalogue",
        table.as_ref().map_err(|e| anyhow!("{e:#}")).map(|t| {
            health.catalogue = Some(CatalogueHealth {
                items: t.len(),
                fingerprint: t.content_id(),
            });
            let search = match t.cell_count() {
                Some(cells) => format!(", approximate search over {cells} cells"),
                None => String::new(),
            };
            format!("{} ({} items{search})", path.display(), t.len())
        }),
    ));
    table
}

/// The store's stock and trends files under `[recommend]`, read against `table`.
fn store_findings(recommend: &RecommendConfig, table: &Table) -> Vec<Finding> {
    let mut findings = Vec::new();
    if let Some(path) = &recommend.stock {
        findings.push(finding(
            "stock",
            Stock::load(path, table).map(|s| {
                format!(
                    "{} ({} rows, {} out of stock, {} ids not in the catalogue)",
                    path.display(),
                    s.rows,
                    s.out_of_stock(),
                    s.unknown_ids
                )
            }),
        ));
    }
    if let Some(path) = &recommend.trends {
        findings.push(finding(
            "trends",
            Trends::load(path, table).map(|t| {
                format!(
                    "{} ({} sessions, {} ids not in the catalogue)",
                    path.display(),
                    t.sessions,
                    t.unknown_ids
                )
            }),
        ));
    }
    findings
}

/// The garment parser under `[outfit]`, and whether the catalogue (when it loaded) has every
/// configured category.
fn outfits_finding(settings: &OutfitConfig, table: Option<&Table>) -> Result<String> {
    let outfits = Outfits::load(settings)?;
    let manifest = outfits.parser.manifest();
    let mut line = format!(
        "garment parser {} ({}, {}): {}",
        manifest.name,
        outfits.parser.manifest_path().display(),
        manifest.fingerprint().short(),
        settings
            .garments
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(table) = table {
        let unknown = outfits.unknown_categories(table);
        if unknown.is_empty() {
            line.push_str("; every category is in the catalogue");
        } else {
            line.push_str(&format!("; the catalogue has no {}", unknown.join(", ")));
        }
    }
    Ok(line)
}

/// One frame from the camera, timed, with its finding.
fn capture(camera: &mut Result<Box<dyn Camera>>, findings: &mut Vec<Finding>) -> Option<RgbImage> {
    let frame = match camera.as_mut() {
        Ok(camera) => {
            let start = Instant::now();
            camera
                .capture()
                .map(|frame| (frame, start.elapsed()))
                .map_err(anyhow::Error::from)
        }
        Err(e) => Err(anyhow!("{e:#}")),
    };
    findings.push(finding(
        "camera",
        match (&*camera, &frame) {
            (Ok(camera), Ok((frame, took))) => Ok(format!(
                "{}: {}×{} frame in {:.0} ms",
                camera.describe(),
                frame.width(),
                frame.height(),
                took.as_secs_f64() * 1000.0
            )),
            (Err(e), _) | (_, Err(e)) => Err(anyhow!("{e:#}")),
        },
    ));
    frame.ok().map(|(frame, _)| frame)
}

/// The trigger, the display (it shows a message) and the scan log.
fn check_outputs(config: &Config, findings: &mut Vec<Finding>, health: &mut Health) {
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
    health.display = part(findings.last());
    findings.push(finding(
        "scan log",
        match &config.scan_log.path {
            Some(path) => ScanLog::open(path, config.scan_log.max_bytes, config.scan_log.keep)
                .map(|log| format!("{} (writable)", log.path().display())),
            None => Ok("off".into()),
        },
    ));
}

/// The camera's frame through the pipeline a scan uses, assembled from `config`: how the item
/// was found, the first result and how long it took.
fn look_up(config: &Config, embedder: &Embedder, table: Table, frame: &RgbImage) -> Result<String> {
    let mut pipeline =
        Pipeline::assemble(config, embedder.session()?, table, &mut Store::default());
    let start = Instant::now();
    let result = pipeline.look_up(frame)?;
    let took = start.elapsed().as_secs_f64() * 1000.0;
    let found = match (result.results.first(), result.garments.len()) {
        (Some(best), _) => format!("{} ({:.3}) first", best.id, best.score),
        (None, 0) => "nothing to look up".into(),
        (None, garments) => format!("{garments} garments"),
    };
    Ok(format!(
        "a scan of the frame: {} by {}, in {took:.0} ms",
        found,
        result.region.name()
    ))
}

/// A finding as a device's health.
fn part(finding: Option<&Finding>) -> Part {
    match finding.map(|f| &f.outcome) {
        Some(Ok(detail)) => Part::up(detail.clone()),
        Some(Err(reason)) => Part::down(reason.clone()),
        None => Part::down("not checked"),
    }
}
