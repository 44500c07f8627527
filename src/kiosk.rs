//! The kiosk service: button → camera → look-up → screen, all day, unattended.
//!
//! One main thread owns the display, the state machine and the scan log, and reacts to events
//! (presses, signals, scan results) from a channel. A worker thread owns the camera, the model
//! session and the table, and runs scans one at a time. The pure [`Machine`] decides when a press
//! starts a scan: contact bounce is ignored, presses during a scan are coalesced into at most one
//! queued scan.

use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use image::RgbImage;
use serde::Serialize;

use crate::calibration::{Calibration, ControlSetting};
use crate::catalogue::Table;
use crate::colour::{self, Correction};
use crate::config::{CameraConfig, Config, SceneConfig};
use crate::device::camera;
use crate::device::display::CalibrationStep;
use crate::device::{self, Camera, Display, Screen};
use crate::model::{self, Embedder, Session};
use crate::query::{self, ms, Recommendation};
use crate::scanlog::ScanLog;

/// Ignores presses closer than `window` to the last accepted one (contact bounce).
#[derive(Debug)]
pub struct Debouncer {
    window: Duration,
    last: Option<Instant>,
}

impl Debouncer {
    pub fn new(window: Duration) -> Self {
        Debouncer { window, last: None }
    }

    /// Whether a press at `at` is a real press.
    pub fn accept(&mut self, at: Instant) -> bool {
        if self
            .last
            .is_some_and(|last| at.saturating_duration_since(last) < self.window)
        {
            return false;
        }
        self.last = Some(at);
        true
    }
}

/// Where the kiosk is in its cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Idle,
    /// A scan runs for the press at `pressed`.
    Scanning {
        pressed: Instant,
    },
    /// Results (or a failed scan's message) stay on screen until `until`.
    Showing {
        until: Instant,
    },
}

/// The kiosk's state machine: idle → scanning → showing → idle. Pure: time comes in as values.
#[derive(Debug)]
pub struct Machine {
    state: State,
    debouncer: Debouncer,
    /// The first press that arrived while scanning, if any: at most one queued scan.
    queued: Option<Instant>,
    coalesced: u32,
    results_for: Duration,
}

impl Machine {
    pub fn new(debounce: Duration, results_for: Duration) -> Self {
        Machine {
            state: State::Idle,
            debouncer: Debouncer::new(debounce),
            queued: None,
            coalesced: 0,
            results_for,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// A press at `at`; returns the press time when a scan should start now.
    pub fn press(&mut self, at: Instant) -> Option<Instant> {
        if !self.debouncer.accept(at) {
            return None;
        }
        match self.state {
            State::Scanning { .. } => {
                self.queued.get_or_insert(at);
                self.coalesced += 1;
                None
            }
            State::Idle | State::Showing { .. } => {
                self.state = State::Scanning { pressed: at };
                Some(at)
            }
        }
    }

    /// The running scan ended at `now`. Returns the queued press when a queued scan starts now,
    /// else shows the outcome until `now + results_for`. Also returns how many presses were
    /// coalesced into the finished scan's queue.
    pub fn scan_finished(&mut self, now: Instant) -> (Option<Instant>, u32) {
        let coalesced = std::mem::take(&mut self.coalesced);
        match self.queued.take() {
            Some(pressed) => {
                self.state = State::Scanning { pressed };
                (Some(pressed), coalesced)
            }
            None => {
                self.state = State::Showing {
                    until: now + self.results_for,
                };
                (None, coalesced)
            }
        }
    }

    /// Advances time; true when the shown results expired and the kiosk went back to idle.
    pub fn tick(&mut self, now: Instant) -> bool {
        if let State::Showing { until } = self.state {
            if now >= until {
                self.state = State::Idle;
                return true;
            }
        }
        false
    }
}

/// What the worker is asked to do.
enum Request {
    Scan {
        pressed: Instant,
    },
    ProbeCamera,
    SetTable(Arc<Table>),
    /// Lock the camera's controls and capture the empty scene; then, without a card to wait
    /// for, save the calibration and use it from now on.
    CalibrateEmptyScene,
    /// Capture the white card, then save the calibration and use it from now on.
    CalibrateCard,
}

/// What happens, in the order it happens.
enum Event {
    Press(Instant),
    TriggerEnded,
    Reload,
    Shutdown(&'static str),
    Scanned(Box<ScanReport>),
    Camera(Result<String, String>),
    /// SIGUSR2: recalibrate.
    CalibrateRequested,
    /// The empty scene is taken: the card is next.
    EmptySceneTaken(Result<(), String>),
    /// The calibration is saved and in use (a summary), or refused (the previous one is kept).
    Calibrated(Result<String, String>),
}

/// Where a calibration started with SIGUSR2 is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Calibrating {
    /// Waiting for the person to step out of view.
    StepAway {
        until: Instant,
    },
    TakingEmptyScene,
    /// Waiting for the card to be held up.
    HoldCard {
        until: Instant,
    },
    ReadingCard,
}

impl Calibrating {
    /// How long the person has to step out of view, and to hold the card up.
    const STEP_AWAY: Duration = Duration::from_secs(3);
    const HOLD_CARD: Duration = Duration::from_secs(5);

    fn screen(self, now: Instant) -> Screen {
        let seconds =
            |until: Instant| until.saturating_duration_since(now).as_secs_f64().ceil() as u32;
        let (step, seconds) = match self {
            Calibrating::StepAway { until } => (CalibrationStep::EmptyScene, seconds(until)),
            Calibrating::TakingEmptyScene => (CalibrationStep::EmptyScene, 0),
            Calibrating::HoldCard { until } => (CalibrationStep::Card, seconds(until)),
            Calibrating::ReadingCard => (CalibrationStep::Card, 0),
        };
        Screen::Calibrating { step, seconds }
    }

    /// When the next thing happens on its own.
    fn deadline(self) -> Option<Instant> {
        match self {
            Calibrating::StepAway { until } | Calibrating::HoldCard { until } => Some(until),
            Calibrating::TakingEmptyScene | Calibrating::ReadingCard => None,
        }
    }
}

/// Milliseconds per stage of one scan, press to screen.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScanLatency {
    /// Press to scan start (non-zero for a queued scan).
    pub wait: f64,
    pub capture: f64,
    /// Finding the item against the empty scene.
    pub foreground: f64,
    pub preprocess: f64,
    pub embed: f64,
    pub search: f64,
    pub display: f64,
    /// Press to screen.
    pub total: f64,
}

/// One scan's outcome, as the worker reports it.
struct ScanReport {
    pressed: Instant,
    /// How the item was found: "reference", "region", "salient" or "centre" ("none" when the scan
    /// failed).
    region: &'static str,
    /// The items, or `None` when the frame held nothing but the empty scene.
    outcome: Result<Option<Vec<Recommendation>>, ScanFailure>,
    /// The colour correction applied, when the frame was looked at.
    colour: Option<colour::Applied>,
    latency: ScanLatency,
}

#[derive(Debug, Clone)]
enum ScanFailure {
    Camera(String),
    Model(String),
}

/// One line of the scan log.
#[derive(Serialize)]
struct ScanRecord<'a> {
    time: String,
    scan: u64,
    outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// How the item was found in the frame.
    region: &'static str,
    /// The colour correction applied to what was embedded, and where it came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    colour: Option<&'a colour::Applied>,
    results: Vec<LoggedItem<'a>>,
    /// Presses that arrived during this scan and were merged into one queued scan.
    coalesced: u32,
    latency_ms: &'a ScanLatency,
}

#[derive(Serialize)]
struct LoggedItem<'a> {
    id: &'a str,
    score: f32,
}

/// The scanning side: camera, model session, table and empty-scene reference, on its own thread.
struct Scanner {
    camera_config: CameraConfig,
    camera: Option<Box<dyn Camera>>,
    session: Session,
    table: Arc<Table>,
    top: usize,
    scene: SceneConfig,
    calibration: Option<Calibration>,
    /// The colour correction of the calibration under the config.
    colour: Correction,
    /// The empty scene's frames and the controls locked for them, while the card is awaited.
    pending: Option<(Vec<RgbImage>, Vec<ControlSetting>)>,
}

/// How long a camera's automatic exposure and white balance get to settle before calibration
/// locks them.
const SETTLE: Duration = Duration::from_secs(2);

/// Hands the camera's automatic modes back, lets them settle on the scene for `settle`, and locks
/// them where they settled; returns what was locked (nothing for a camera without controls).
pub fn lock_controls(camera: &mut dyn Camera, settle: Duration) -> Result<Vec<ControlSetting>> {
    let offered = camera.controls()?;
    if offered.is_empty() {
        tracing::info!(
            "{} offers no exposure or white-balance controls: calibrating with its own settings",
            camera.describe()
        );
        return Ok(Vec::new());
    }
    camera.set_controls(&camera::automatic(&offered))?;
    // The camera's own automatic modes run while it streams, whether or not frames are taken.
    std::thread::sleep(settle);
    let locked = camera::locked(&camera.controls()?);
    camera.set_controls(&locked)?;
    tracing::info!(
        "camera controls locked: {}",
        locked
            .iter()
            .map(|c| format!("{} = {}", c.name, c.value))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(locked)
}

/// Calibrates the configured camera in person, telling `prompt` what to do and when: step out
/// of view (3 s), the controls settle and lock, the empty scene is captured; with `card`, hold the
/// white card up (5 s) and it is read. Refused (nothing saved) with the reason when a step fails.
pub fn calibrate_camera(
    config: &Config,
    frames: u32,
    card: bool,
    mut prompt: impl FnMut(&str),
) -> Result<Calibration> {
    let mut camera = device::open_camera(&config.camera).map_err(|e| {
        if format!("{e:#}").contains("busy") {
            e.context(
                "the camera is in use: if the kiosk is running, recalibrate through it with \
                 `sudo systemctl kill -s USR2 fashion-kiosk`",
            )
        } else {
            e
        }
    })?;
    let countdown = |prompt: &mut dyn FnMut(&str), what: &str, wait: Duration| {
        for left in (1..=wait.as_secs()).rev() {
            prompt(&format!("{what}: {left} s"));
            std::thread::sleep(Duration::from_secs(1));
        }
    };
    countdown(
        &mut prompt,
        "Step out of the camera's view",
        Calibrating::STEP_AWAY,
    );
    prompt(&format!(
        "Letting {} settle, then capturing {frames} frames of the empty scene",
        camera.describe()
    ));
    let controls = lock_controls(camera.as_mut(), SETTLE)?;
    let empty = capture_empty_scene(camera.as_mut(), frames)?;
    let card = if card {
        countdown(
            &mut prompt,
            "Hold a matte white card (A5 or larger) up in front of the camera, facing it",
            Calibrating::HOLD_CARD,
        );
        Some(camera.capture().context("capturing the white card")?)
    } else {
        None
    };
    Calibration::from_frames(&empty, card.as_ref(), &config.scene.colour(), controls)
}

/// Captures `frames` frames of the empty scene from `camera`.
pub fn capture_empty_scene(camera: &mut dyn Camera, frames: u32) -> Result<Vec<RgbImage>> {
    (0..frames)
        .map(|_| camera.capture())
        .collect::<Result<Vec<_>>>()
        .context("capturing the empty scene")
}

impl Scanner {
    fn ensure_camera(&mut self) -> Result<&mut Box<dyn Camera>, String> {
        if self.camera.is_none() {
            let mut camera =
                device::open_camera(&self.camera_config).map_err(|e| format!("{e:#}"))?;
            tracing::info!("camera ready: {}", camera.describe());
            // The controls calibration locked, before the first frame.
            let controls = self
                .calibration
                .as_ref()
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

    fn scan(&mut self, pressed: Instant) -> ScanReport {
        let started = Instant::now();
        let mut latency = ScanLatency {
            wait: ms(pressed, started),
            ..ScanLatency::default()
        };
        let frame = self
            .ensure_camera()
            .and_then(|camera| camera.capture().map_err(|e| format!("{e:#}")));
        latency.capture = ms(started, Instant::now());
        let frame = match frame {
            Ok(frame) => frame,
            Err(message) => {
                // Reopened on the next scan or probe: an unplugged camera may come back.
                self.camera = None;
                return ScanReport {
                    pressed,
                    region: "none",
                    outcome: Err(ScanFailure::Camera(message)),
                    colour: None,
                    latency,
                };
            }
        };
        let options = query::Options {
            reference: self.calibration.as_ref().map(|c| &c.scene),
            colour: &self.colour,
            region: self.scene.region,
            flip: false,
            crops: false,
        };
        let looked_up =
            query::query_image(&mut self.session, &self.table, &frame, options, self.top);
        let region = match &looked_up {
            // A frame like the empty scene was still looked at by the reference.
            Ok(result) if result.region == "nothing" => "reference",
            Ok(result) => result.region,
            Err(_) => "none",
        };
        let colour = looked_up.as_ref().ok().map(|result| result.colour.clone());
        let outcome = looked_up
            .map(|result| {
                let stages = &result.latency_ms;
                latency.foreground = stages.foreground;
                latency.preprocess = stages.preprocess;
                latency.embed = stages.embed;
                latency.search = stages.search;
                (result.region != "nothing").then_some(result.results)
            })
            .map_err(|e| ScanFailure::Model(format!("{e:#}")));
        ScanReport {
            pressed,
            region,
            outcome,
            colour,
            latency,
        }
    }

    /// Locks the camera's controls and captures the empty scene. With a card to come, keeps them
    /// for [`Scanner::calibrate_card`] and returns `None`; else saves the calibration.
    fn calibrate_empty_scene(&mut self) -> Result<Option<String>, String> {
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
    fn calibrate_card(&mut self) -> Result<String, String> {
        let card = self
            .ensure_camera()
            .and_then(|camera| camera.capture().map_err(|e| format!("{e:#}")));
        match card {
            Ok(card) => self.finish_calibration(Some(card)),
            Err(e) => Err(self.calibration_refused(e)),
        }
    }

    /// Computes and saves the calibration from the pending empty scene (and `card`), and uses it.
    fn finish_calibration(&mut self, card: Option<RgbImage>) -> Result<String, String> {
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
        self.colour = calibration.correction(&settings);
        self.calibration = Some(calibration);
        Ok(summary)
    }

    /// A calibration that failed: the previous one stays, with the camera's controls put back
    /// as it had them (the camera is reopened if it is gone).
    fn calibration_refused(&mut self, reason: String) -> String {
        self.pending = None;
        let previous = self
            .calibration
            .as_ref()
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

    fn serve(mut self, requests: Receiver<Request>, events: Sender<Event>, threads: usize) {
        tract_linalg::multithread::multithread_tract_scope(model::executor(threads), || {
            for request in requests {
                let event = match request {
                    Request::Scan { pressed } => Event::Scanned(Box::new(self.scan(pressed))),
                    Request::ProbeCamera => {
                        Event::Camera(self.ensure_camera().map(|camera| camera.describe()))
                    }
                    Request::SetTable(table) => {
                        self.table = table;
                        continue;
                    }
                    Request::CalibrateEmptyScene => match self.calibrate_empty_scene() {
                        Ok(None) => Event::EmptySceneTaken(Ok(())),
                        Ok(Some(summary)) => Event::Calibrated(Ok(summary)),
                        Err(e) => Event::Calibrated(Err(e)),
                    },
                    Request::CalibrateCard => Event::Calibrated(self.calibrate_card()),
                };
                if events.send(event).is_err() {
                    break;
                }
            }
        })
    }
}

/// The main thread's view of the display: shows a screen only when it changes, and degrades to
/// headless (with one warning) when the display fails.
struct Screens {
    display: Option<Box<dyn Display>>,
    current: Option<Screen>,
    failed: bool,
}

impl Screens {
    fn show(&mut self, screen: Screen) {
        if self.current.as_ref() == Some(&screen) {
            return;
        }
        if let Some(device) = self.display.as_mut() {
            match device.show(&screen) {
                Ok(()) => {
                    if self.failed {
                        tracing::info!("display {} works again", device.describe());
                        self.failed = false;
                    }
                }
                Err(e) if !self.failed => {
                    tracing::warn!("display failed, running on without it until it answers: {e:#}");
                    self.failed = true;
                }
                Err(e) => tracing::debug!("display still failing: {e:#}"),
            }
        }
        self.current = Some(screen);
    }
}

/// systemd notifications (no-ops outside systemd).
fn notify(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!("sd_notify failed: {e}");
    }
}

/// Loads the table and checks it was made with `embedder`'s model.
pub fn load_table(embedder: &Embedder, path: &std::path::Path) -> Result<Table> {
    let table = Table::load(path)?;
    table.ensure_model(embedder.fingerprint(), embedder.manifest_path())?;
    Ok(table)
}

/// A short title for an error screen, from a failure at start.
fn startup_error(title: &str, screens: &mut Screens, err: anyhow::Error) -> anyhow::Error {
    screens.show(Screen::Message {
        title: title.into(),
        detail: format!("{err:#}"),
    });
    err
}

/// Runs the kiosk until SIGTERM/SIGINT (or the end of a stdin trigger). An error return means
/// the service cannot work (model or table unusable, a hung scan): systemd restarts it.
pub fn run(config: &Config) -> Result<()> {
    // The display comes first so that every later failure can be shown.
    let display = match device::open_display(&config.display) {
        Ok(Some(device)) => {
            tracing::info!("display: {}", device.describe());
            Some(device)
        }
        Ok(None) => {
            tracing::info!("no display configured: running headless");
            None
        }
        Err(e) => {
            tracing::warn!("display unavailable, running headless: {e:#}");
            None
        }
    };
    let mut screens = Screens {
        display,
        current: None,
        failed: false,
    };
    screens.show(Screen::Message {
        title: "Starting".into(),
        detail: "Loading the model and the catalogue".into(),
    });

    let manifest = config.model.manifest_path();
    let embedder =
        Embedder::load(&manifest).map_err(|e| startup_error("No model", &mut screens, e))?;
    let table = load_table(&embedder, &config.catalogue.table)
        .map_err(|e| startup_error("No catalogue", &mut screens, e))?;
    let session = embedder
        .session()
        .map_err(|e| startup_error("No model", &mut screens, e))?;
    let mut items = table.len();
    tracing::info!(
        "model {} ({}), catalogue {} with {items} items",
        embedder.manifest().name,
        manifest.display(),
        config.catalogue.table.display()
    );

    // The empty scene, if calibrated: a bad file is reported, and the kiosk runs without it.
    let calibration = match &config.scene.reference {
        Some(path) => match Calibration::load(path) {
            Ok(Some(calibration)) => {
                tracing::info!("scene: calibrated ({})", path.display());
                Some(calibration)
            }
            Ok(None) => {
                tracing::warn!(
                    "scene: not calibrated yet ({} missing): run `fashion-kiosk calibrate`",
                    path.display()
                );
                None
            }
            Err(e) => {
                tracing::error!("scene: {e:#}");
                None
            }
        },
        None => None,
    };
    let colour = calibration
        .as_ref()
        .map(|c| c.correction(&config.scene.colour()))
        .unwrap_or_default();

    let mut scan_log = match &config.scan_log.path {
        Some(path) => Some(ScanLog::open(
            path,
            config.scan_log.max_bytes,
            config.scan_log.keep,
        )?),
        None => None,
    };

    let (events_tx, events) = mpsc::channel();
    spawn_signal_thread(events_tx.clone())?;
    let trigger = device::open_trigger(&config.trigger, config.kiosk.debounce())
        .context("cannot open the trigger")?;
    match trigger {
        Some(trigger) => {
            tracing::info!("trigger: {} (and SIGUSR1)", trigger.describe());
            spawn_trigger_thread(trigger, events_tx.clone())?;
        }
        None => tracing::info!("trigger: SIGUSR1 only"),
    }

    let (requests, worker_requests) = mpsc::channel();
    let scanner = Scanner {
        camera_config: config.camera.clone(),
        camera: None,
        session,
        table: Arc::new(table),
        top: config.kiosk.top,
        scene: config.scene.clone(),
        calibration,
        colour,
        pending: None,
    };
    let threads = config.model.thread_count();
    let worker_events = events_tx.clone();
    std::thread::Builder::new()
        .name("scanner".into())
        .spawn(move || scanner.serve(worker_requests, worker_events, threads))
        .context("cannot start the scanner thread")?;
    drop(events_tx);
    let send = |request: Request| {
        requests
            .send(request)
            .map_err(|_| anyhow!("the scanner thread has stopped"))
    };
    send(Request::ProbeCamera)?;

    let watchdog = sd_notify::watchdog_enabled();
    let ping_every = watchdog.map(|w| w / 2);
    let mut last_ping = Instant::now();
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&format!("ready: {items} items")),
    ]);
    tracing::info!("ready: press to scan");

    let mut machine = Machine::new(config.kiosk.debounce(), config.kiosk.results_for());
    let mut camera_fault: Option<String> = None;
    let mut camera_probe_pending = true;
    let mut retry_delay = Duration::from_secs(1);
    let mut next_probe: Option<Instant> = None;
    let mut scan_started: Option<Instant> = None;
    let mut last_outcome: Option<Screen> = None;
    let mut notice: Option<(Screen, Instant)> = None;
    let mut scans = 0u64;
    let mut stop_when_idle = false;
    let mut calibrating: Option<Calibrating> = None;

    loop {
        let now = Instant::now();
        // Screen for the current state.
        let screen = match machine.state() {
            State::Scanning { pressed } => Screen::Scanning {
                tenths: (now.saturating_duration_since(pressed).as_millis() / 500 * 5) as u32,
            },
            _ if calibrating.is_some() => calibrating.expect("checked").screen(now),
            // A notice (a refused reload, a calibration) shows at once, over results, for its time.
            _ if notice.as_ref().is_some_and(|(_, until)| now < *until) => {
                notice.as_ref().expect("checked").0.clone()
            }
            State::Showing { .. } => last_outcome.clone().unwrap_or(Screen::Idle { items }),
            State::Idle => match &camera_fault {
                Some(fault) => Screen::Message {
                    title: "Camera offline".into(),
                    detail: fault.clone(),
                },
                None => Screen::Idle { items },
            },
        };
        screens.show(screen);

        if stop_when_idle && !matches!(machine.state(), State::Scanning { .. }) {
            tracing::info!("trigger closed and no scan pending: stopping");
            break;
        }

        // A hung scan is a fault systemd should see: stop and let it restart the service.
        if let Some(started) = scan_started {
            if now - started > config.kiosk.scan_timeout() {
                screens.show(Screen::Message {
                    title: "Scan hung".into(),
                    detail: "restarting".into(),
                });
                bail!(
                    "a scan has run for over {:.0} s: giving up so that the service restarts",
                    config.kiosk.scan_timeout().as_secs_f64()
                );
            }
        }
        if let Some(every) = ping_every {
            if now - last_ping >= every {
                notify(&[sd_notify::NotifyState::Watchdog]);
                last_ping = now;
            }
        }
        match calibrating {
            Some(Calibrating::StepAway { until })
                if now >= until && !matches!(machine.state(), State::Scanning { .. }) =>
            {
                send(Request::CalibrateEmptyScene)?;
                calibrating = Some(Calibrating::TakingEmptyScene);
            }
            Some(Calibrating::HoldCard { until }) if now >= until => {
                send(Request::CalibrateCard)?;
                calibrating = Some(Calibrating::ReadingCard);
            }
            _ => {}
        }
        if let Some(at) = next_probe {
            if now >= at && !camera_probe_pending {
                send(Request::ProbeCamera)?;
                camera_probe_pending = true;
                next_probe = None;
            }
        }

        // Sleep until the next thing to do.
        let mut wake = now + Duration::from_secs(1);
        if matches!(machine.state(), State::Scanning { .. }) {
            wake = wake.min(now + Duration::from_millis(100));
        }
        if let State::Showing { until } = machine.state() {
            wake = wake.min(until);
        }
        if let Some((_, until)) = &notice {
            if *until > now {
                wake = wake.min(*until);
            }
        }
        if let Some(at) = next_probe {
            wake = wake.min(at);
        }
        if let Some(at) = calibrating.and_then(Calibrating::deadline) {
            // The countdown moves on the screen each second.
            wake = wake.min(at).min(now + Duration::from_millis(250));
        }
        if let Some(every) = ping_every {
            wake = wake.min(last_ping + every);
        }
        let event = match events.recv_timeout(wake.saturating_duration_since(now)) {
            Ok(event) => event,
            Err(RecvTimeoutError::Timeout) => {
                machine.tick(Instant::now());
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => bail!("every event source has stopped"),
        };

        match event {
            Event::Press(_) if calibrating.is_some() => {
                tracing::debug!("press ignored: calibrating");
            }
            Event::Press(at) => {
                if let Some(pressed) = machine.press(at) {
                    send(Request::Scan { pressed })?;
                    scan_started = Some(Instant::now());
                } else {
                    tracing::debug!("press ignored (bounce) or queued (scan running)");
                }
            }
            Event::Scanned(report) => {
                scan_started = None;
                scans += 1;
                let finished = Instant::now();
                let (next, coalesced) = machine.scan_finished(finished);
                let (outcome_screen, error) = match &report.outcome {
                    Ok(Some(results)) => (
                        Screen::Results {
                            items: results.iter().map(|r| (r.id.clone(), r.score)).collect(),
                        },
                        None,
                    ),
                    Ok(None) => (Screen::NothingToScan, None),
                    Err(ScanFailure::Camera(message)) => {
                        if camera_fault.is_none() {
                            tracing::warn!("camera lost: {message}");
                        }
                        camera_fault = Some(message.clone());
                        next_probe.get_or_insert(finished + retry_delay);
                        (
                            Screen::Message {
                                title: "Camera offline".into(),
                                detail: message.clone(),
                            },
                            Some(message.clone()),
                        )
                    }
                    Err(ScanFailure::Model(message)) => (
                        Screen::Message {
                            title: "Scan failed".into(),
                            detail: message.clone(),
                        },
                        Some(message.clone()),
                    ),
                };
                if report.outcome.is_ok() && camera_fault.take().is_some() {
                    tracing::info!("camera back");
                    retry_delay = Duration::from_secs(1);
                    next_probe = None;
                }
                let shown = Instant::now();
                screens.show(outcome_screen.clone());
                let mut latency = report.latency.clone();
                latency.display = ms(shown, Instant::now());
                latency.total = ms(report.pressed, Instant::now());
                last_outcome = Some(outcome_screen);
                log_scan(&mut scan_log, scans, &report, error, coalesced, &latency);
                if let Some(pressed) = next {
                    send(Request::Scan { pressed })?;
                    scan_started = Some(Instant::now());
                }
            }
            Event::Camera(Ok(describe)) => {
                camera_probe_pending = false;
                if camera_fault.take().is_some() {
                    tracing::info!("camera back: {describe}");
                }
                retry_delay = Duration::from_secs(1);
                next_probe = None;
            }
            Event::Camera(Err(message)) => {
                camera_probe_pending = false;
                if camera_fault.as_ref() != Some(&message) {
                    tracing::warn!("camera offline: {message}");
                }
                camera_fault = Some(message);
                next_probe = Some(Instant::now() + retry_delay);
                tracing::debug!("next camera attempt in {:.1} s", retry_delay.as_secs_f64());
                retry_delay = (retry_delay * 2).min(config.kiosk.camera_retry_max());
            }
            Event::Reload => {
                notify(&[sd_notify::NotifyState::Status("reloading the catalogue")]);
                match load_table(&embedder, &config.catalogue.table) {
                    Ok(table) => {
                        items = table.len();
                        tracing::info!(
                            "reloaded {}: {items} items",
                            config.catalogue.table.display()
                        );
                        send(Request::SetTable(Arc::new(table)))?;
                        notice = None;
                    }
                    Err(e) => {
                        tracing::error!("reload refused, keeping the previous catalogue: {e:#}");
                        notice = Some((
                            Screen::Message {
                                title: "Reload failed".into(),
                                detail: format!("{e:#}"),
                            },
                            Instant::now() + config.kiosk.results_for(),
                        ));
                    }
                }
                notify(&[sd_notify::NotifyState::Status(&format!(
                    "ready: {items} items"
                ))]);
            }
            Event::CalibrateRequested if calibrating.is_some() => {
                tracing::info!("calibration requested while calibrating: ignored");
            }
            Event::CalibrateRequested => {
                tracing::info!(
                    "calibration requested: capturing the empty scene in {} s",
                    Calibrating::STEP_AWAY.as_secs()
                );
                calibrating = Some(Calibrating::StepAway {
                    until: Instant::now() + Calibrating::STEP_AWAY,
                });
            }
            Event::EmptySceneTaken(Ok(())) => {
                tracing::info!(
                    "empty scene taken: hold the white card up within {} s",
                    Calibrating::HOLD_CARD.as_secs()
                );
                calibrating = Some(Calibrating::HoldCard {
                    until: Instant::now() + Calibrating::HOLD_CARD,
                });
            }
            Event::EmptySceneTaken(Err(e)) | Event::Calibrated(Err(e)) => {
                calibrating = None;
                tracing::error!("calibration failed, the previous one is kept: {e}");
                notice = Some((
                    Screen::Message {
                        title: "Calibration".into(),
                        detail: format!("failed: {e}"),
                    },
                    Instant::now() + config.kiosk.results_for(),
                ));
            }
            Event::Calibrated(Ok(summary)) => {
                calibrating = None;
                tracing::info!("calibrated: {summary}");
                let detail = if summary.contains("card gains") {
                    "The empty scene and the light are saved"
                } else {
                    "The empty scene is saved"
                };
                notice = Some((
                    Screen::Message {
                        title: "Calibrated".into(),
                        detail: detail.into(),
                    },
                    Instant::now() + config.kiosk.results_for(),
                ));
            }
            Event::TriggerEnded => {
                tracing::info!("trigger input ended");
                stop_when_idle = true;
            }
            Event::Shutdown(signal) => {
                tracing::info!("{signal}: stopping");
                break;
            }
        }
        machine.tick(Instant::now());
    }
    notify(&[sd_notify::NotifyState::Stopping]);
    screens.show(Screen::Stopped);
    Ok(())
}

fn log_scan(
    scan_log: &mut Option<ScanLog>,
    scan: u64,
    report: &ScanReport,
    error: Option<String>,
    coalesced: u32,
    latency: &ScanLatency,
) {
    let results: Vec<LoggedItem> = match &report.outcome {
        Ok(Some(results)) => results
            .iter()
            .map(|r| LoggedItem {
                id: &r.id,
                score: r.score,
            })
            .collect(),
        Ok(None) | Err(_) => Vec::new(),
    };
    let outcome = match (&report.outcome, results.first()) {
        (Ok(_), Some(best)) => {
            tracing::info!(
                "scan {scan}: {} ({:.3}) … in {:.0} ms",
                best.id,
                best.score,
                latency.total
            );
            "ok"
        }
        (Ok(_), None) => {
            tracing::info!("scan {scan}: nothing in front of the camera");
            "nothing"
        }
        (Err(_), _) => {
            tracing::warn!(
                "scan {scan} failed: {}",
                error.as_deref().unwrap_or("unknown")
            );
            "error"
        }
    };
    let Some(log) = scan_log.as_mut() else {
        return;
    };
    let record = ScanRecord {
        time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        scan,
        outcome,
        error,
        region: report.region,
        colour: report.colour.as_ref(),
        results,
        coalesced,
        latency_ms: latency,
    };
    if let Err(e) = log.append(&record) {
        tracing::error!("scan not logged: {e:#}");
    }
}

fn spawn_signal_thread(events: Sender<Event>) -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2])
            .context("cannot install signal handlers")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                let event = match signal {
                    SIGHUP => Event::Reload,
                    SIGUSR1 => Event::Press(Instant::now()),
                    SIGUSR2 => Event::CalibrateRequested,
                    SIGINT => Event::Shutdown("SIGINT"),
                    _ => Event::Shutdown("SIGTERM"),
                };
                if events.send(event).is_err() {
                    break;
                }
            }
        })
        .context("cannot start the signal thread")?;
    Ok(())
}

fn spawn_trigger_thread(
    mut trigger: Box<dyn device::Trigger>,
    events: Sender<Event>,
) -> Result<()> {
    std::thread::Builder::new()
        .name("trigger".into())
        .spawn(move || {
            let mut backoff = Duration::from_millis(500);
            loop {
                match trigger.wait() {
                    Ok(true) => {
                        backoff = Duration::from_millis(500);
                        if events.send(Event::Press(Instant::now())).is_err() {
                            break;
                        }
                    }
                    Ok(false) => {
                        let _ = events.send(Event::TriggerEnded);
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(
                            "{}: {e:#}; retrying in {:.1} s",
                            trigger.describe(),
                            backoff.as_secs_f64()
                        );
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            }
        })
        .context("cannot start the trigger thread")?;
    Ok(())
}

/// Where the kiosk's demo keeps its screens and scan log when none are given.
pub fn demo_output_dir() -> PathBuf {
    std::env::temp_dir().join("fashion-kiosk-demo")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn contact_bounce_never_starts_a_second_scan() {
        let t0 = Instant::now();
        let mut machine = Machine::new(ms(50), ms(8000));
        assert_eq!(machine.press(t0), Some(t0));
        for bounce in [1, 3, 7, 12, 30, 49] {
            assert_eq!(machine.press(t0 + ms(bounce)), None);
        }
        // The scan ends quickly (within the bounce window): nothing was queued.
        assert_eq!(machine.scan_finished(t0 + ms(40)), (None, 0));
        assert!(matches!(machine.state(), State::Showing { .. }));
        // Bounce of the release edge, after the scan, still inside the window.
        assert_eq!(machine.press(t0 + ms(45)), None);
        assert!(matches!(machine.state(), State::Showing { .. }));
    }

    #[test]
    fn presses_during_a_scan_coalesce_into_one_queued_scan() {
        let t0 = Instant::now();
        let mut machine = Machine::new(ms(50), ms(8000));
        machine.press(t0);
        for n in 1..=5 {
            assert_eq!(machine.press(t0 + ms(100 * n)), None);
        }
        // The first queued press is the one whose wait is measured.
        assert_eq!(machine.scan_finished(t0 + ms(700)), (Some(t0 + ms(100)), 5));
        assert_eq!(
            machine.state(),
            State::Scanning {
                pressed: t0 + ms(100)
            }
        );
        assert_eq!(machine.scan_finished(t0 + ms(1400)), (None, 0));
        assert_eq!(
            machine.state(),
            State::Showing {
                until: t0 + ms(9400)
            }
        );
    }

    #[test]
    fn results_expire_to_idle_and_a_press_while_showing_scans_again() {
        let t0 = Instant::now();
        let mut machine = Machine::new(ms(50), ms(1000));
        machine.press(t0);
        machine.scan_finished(t0 + ms(500));
        assert!(!machine.tick(t0 + ms(1499)));
        assert!(machine.tick(t0 + ms(1500)));
        assert_eq!(machine.state(), State::Idle);
        machine.press(t0 + ms(2000));
        machine.scan_finished(t0 + ms(2500));
        assert_eq!(machine.press(t0 + ms(2600)), Some(t0 + ms(2600)));
    }
}
