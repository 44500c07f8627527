//! The kiosk's worker thread: it owns the camera, the model session, the catalogue and the
//! calibration, and runs requests one at a time (scans, camera probes, calibration steps), each
//! answered with one report.

use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::Instant;

use image::RgbImage;

use super::calibrate::{capture_empty_scene, lock_controls, SETTLE};
use super::core::Calibrated;
use crate::device::camera::{self, CaptureError};
use crate::device::{self, Camera};
use kiosk_pipeline::config::{CameraConfig, SceneConfig};
use kiosk_pipeline::outfit::GarmentResult;
use kiosk_pipeline::pipeline::Pipeline;
use kiosk_pipeline::query::{ms, FoundBy, Recommendation};
use kiosk_pipeline::recommend::Recommender;
use kiosk_pipeline::record::{ScanError, ScanLatency};
use kiosk_table::catalogue::Table;
use kiosk_vision::calibration::{Calibration, ControlSetting};
use kiosk_vision::colour;
use kiosk_vision::model;

/// What the worker is asked to do.
pub enum Request {
    Scan {
        pressed: Instant,
    },
    ProbeCamera,
    /// A reloaded catalogue, and its recommender (with the store's stock and trends).
    SetTable(Arc<Table>, Box<Option<Recommender>>),
    /// What goes with the last scan's item.
    GoesWith,
    /// Lock the camera's controls and capture the empty scene; then, without a card to wait
    /// for, save the calibration and use it from now on.
    CalibrateEmptyScene,
    /// Capture the white card, then save the calibration and use it from now on.
    CalibrateCard,
}

/// What the worker answers.
pub enum Report {
    Scanned(Box<ScanReport>),
    CameraProbed(Result<String, String>),
    /// What goes with the last scan's item (id and category), best first.
    WentWith(Vec<(String, String)>),
    /// The empty scene is taken; the card is next.
    EmptySceneTaken,
    Calibrated(Result<Calibrated, String>),
}

/// One scan, as the worker reports it.
#[derive(Debug)]
pub struct ScanReport {
    pub pressed: Instant,
    /// How the item was found; `None` when the scan failed before looking.
    pub found: Option<FoundBy>,
    pub outcome: Result<Vec<Recommendation>, ScanError>,
    /// The colour correction applied, when the frame was looked at.
    pub colour: Option<colour::Applied>,
    /// A person's garments, each with its results (then `outcome` holds no items).
    pub garments: Vec<GarmentResult>,
    /// Why an outfit scan looked up the whole frame instead.
    pub note: Option<String>,
    /// Milliseconds per stage; `total` is set when the scan is logged.
    pub latency: ScanLatency,
}

/// The scanning side, on its own thread.
pub struct Scanner {
    pub camera_config: CameraConfig,
    pub camera: Option<Box<dyn Camera>>,
    /// Frame in, recommendations out (the calibration in use is the pipeline's).
    pub pipeline: Pipeline,
    pub scene: SceneConfig,
    /// The empty scene's frames and the controls locked for them, while the card is awaited.
    pub pending: Option<(Vec<RgbImage>, Vec<ControlSetting>)>,
}

impl Scanner {
    /// Runs requests until either channel closes.
    pub fn serve(mut self, requests: Receiver<Request>, reports: Sender<Report>, threads: usize) {
        tract_linalg::multithread::multithread_tract_scope(model::executor(threads), || {
            for request in requests {
                let report = match request {
                    Request::Scan { pressed } => Report::Scanned(Box::new(self.scan(pressed))),
                    Request::ProbeCamera => {
                        Report::CameraProbed(self.ensure_camera().map(|camera| camera.describe()))
                    }
                    Request::SetTable(table, recommender) => {
                        self.pipeline.set_catalogue(table, *recommender);
                        continue;
                    }
                    Request::GoesWith => Report::WentWith(self.pipeline.goes_with()),
                    Request::CalibrateEmptyScene => match self.calibrate_empty_scene() {
                        Ok(None) => Report::EmptySceneTaken,
                        Ok(Some(done)) => Report::Calibrated(Ok(done)),
                        Err(e) => Report::Calibrated(Err(e)),
                    },
                    Request::CalibrateCard => Report::Calibrated(self.calibrate_card()),
                };
                if reports.send(report).is_err() {
                    break;
                }
            }
        })
    }

    /// The camera, opened (with the calibrated controls applied before its first frame) if it
    /// is not open yet.
    fn ensure_camera(&mut self) -> Result<&mut Box<dyn Camera>, String> {
        if self.camera.is_none() {
            let mut camera =
                device::open_camera(&self.camera_config).map_err(|e| format!("{e:#}"))?;
            tracing::info!("camera ready: {}", camera.describe());
            let controls = self
                .pipeline
                .calibration()
                .map_or(&[][..], |c| &c.controls[..]);
            if !controls.is_empty() {
                match camera.set_controls(controls) {
                    Ok(()) => tracing::info!("camera controls as calibrated"),
                    Err(e) => tracing::warn!(
                        "camera controls not restored, scanning with its own settings: {e:#}"
                    ),
                }
            }
            self.camera = Some(camera);
        }
        Ok(self.camera.as_mut().expect("opened above"))
    }

    /// A frame, a bad one taken again; a lost camera is dropped, to be reopened later.
    fn capture(&mut self) -> Result<RgbImage, ScanError> {
        let camera = self.ensure_camera().map_err(ScanError::CameraLost)?;
        match camera::capture_retrying(camera.as_mut()) {
            Ok(frame) => Ok(frame),
            Err(CaptureError::BadFrame(e)) => Err(ScanError::BadFrame(format!("{e:#}"))),
            Err(CaptureError::Device(e)) => {
                self.camera = None;
                Err(ScanError::CameraLost(format!("{e:#}")))
            }
        }
    }

    fn scan(&mut self, pressed: Instant) -> ScanReport {
        let started = Instant::now();
        let mut report = ScanReport {
            pressed,
            found: None,
            outcome: Ok(Vec::new()),
            colour: None,
            garments: Vec::new(),
            note: None,
            latency: ScanLatency {
                wait: ms(pressed, started),
                ..ScanLatency::default()
            },
        };
        let frame = self.capture();
        report.latency.capture = ms(started, Instant::now());
        let frame = match frame {
            Ok(frame) => frame,
            Err(failure) => {
                report.outcome = Err(failure);
                return report;
            }
        };
        match self.pipeline.look_up(&frame) {
            Ok(result) => {
                let stages = &result.latency_ms;
                report.latency.parse = stages.parse;
                report.latency.foreground = stages.foreground;
                report.latency.preprocess = stages.preprocess;
                report.latency.embed = stages.embed;
                report.latency.search = stages.search;
                report.latency.rank = stages.rank;
                report.found = Some(result.region);
                report.colour = Some(result.colour);
                report.garments = result.garments;
                report.note = result.note;
                report.outcome = Ok(result.results);
            }
            Err(e) => report.outcome = Err(ScanError::Model(format!("{e:#}"))),
        }
        report
    }

    /// Locks the camera's controls and captures the empty scene. With a card to come, keeps them
    /// for [`Scanner::calibrate_card`] and returns `None`; else saves the calibration.
    fn calibrate_empty_scene(&mut self) -> Result<Option<Calibrated>, String> {
        let frames = self.scene.calibration_frames;
        let camera = self.ensure_camera()?;
        let taken = lock_controls(camera.as_mut(), SETTLE)
            .and_then(|controls| Ok((capture_empty_scene(camera.as_mut(), frames)?, controls)));
        match taken {
            Ok(taken) => {
                self.pending = Some(taken);
                if self.scene.card {
                    Ok(None)
                } else {
                    self.finish_calibration(None).map(Some)
                }
            }
            Err(e) => Err(self.calibration_refused(format!("{e:#}"))),
        }
    }

    /// Captures the white card and saves the calibration with it.
    fn calibrate_card(&mut self) -> Result<Calibrated, String> {
        let card = self.ensure_camera().and_then(|camera| {
            camera::capture_retrying(camera.as_mut()).map_err(|e| e.to_string())
        });
        match card {
            Ok(card) => self.finish_calibration(Some(card)),
            Err(e) => Err(self.calibration_refused(e)),
        }
    }

    /// Computes and saves the calibration from the pending empty scene (and `card`), and uses it.
    fn finish_calibration(&mut self, card: Option<RgbImage>) -> Result<Calibrated, String> {
        let path = self
            .scene
            .reference
            .clone()
            .ok_or("scene.reference is not set in the config")?;
        let (frames, controls) = self.pending.take().ok_or("no empty scene was taken")?;
        let settings = self.scene.colour();
        let calibration = Calibration::from_frames(&frames, card.as_ref(), &settings, controls)
            .and_then(|calibration| calibration.save(&path).map(|()| calibration));
        let calibration = match calibration {
            Ok(calibration) => calibration,
            Err(e) => return Err(self.calibration_refused(format!("{e:#}"))),
        };
        let summary = match &calibration.card {
            Some(card) => format!(
                "{}; card gains {:.2} {:.2} {:.2}",
                path.display(),
                card.gains[0],
                card.gains[1],
                card.gains[2]
            ),
            None => path.display().to_string(),
        };
        let with_card = calibration.card.is_some();
        self.pipeline.set_calibration(calibration);
        Ok(Calibrated { summary, with_card })
    }

    /// A calibration that failed: the previous one stays, with the camera's controls put back
    /// as it had them (the camera is reopened if that fails).
    fn calibration_refused(&mut self, reason: String) -> String {
        self.pending = None;
        let previous = self
            .pipeline
            .calibration()
            .map(|c| c.controls.clone())
            .unwrap_or_default();
        if let Some(camera) = self.camera.as_mut() {
            let restored = if previous.is_empty() {
                camera
                    .controls()
                    .and_then(|offered| camera.set_controls(&camera::automatic(&offered)))
            } else {
                camera.set_controls(&previous)
            };
            if let Err(e) = restored {
                tracing::warn!("camera controls not restored: {e:#}");
                self.camera = None;
            }
        }
        reason
    }
}
