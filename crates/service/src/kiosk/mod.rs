//! The kiosk service: button → camera → look-up → screen, all day, unattended.
//!
//! [`core`] decides everything that happens over time, from events and the clock; [`run`] is the
//! I/O loop that feeds it events (presses, signals, the worker's reports) and performs its
//! effects: requests to the [`scanner`] thread (camera, model, table, calibration), the scan log,
//! the display, systemd. [`calibrate`] is calibration in person, for the service and the CLI.

pub mod calibrate;
pub mod core;
pub mod scanner;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

use self::core::{Core, Effect, Event, Notice, Outcome, Settings};
use self::scanner::{Report, Request, ScanReport, Scanner};
use crate::device::{self, Display, Screen};
use crate::health::{Monitor, ScanOutcome};
use crate::scanlog::ScanLog;
use kiosk_pipeline::config::Config;
use kiosk_pipeline::pipeline::{load_calibration, Pipeline, Store};
use kiosk_pipeline::query::{ms, FoundBy, Recommendation};
use kiosk_pipeline::record::{self, LoggedGarment, LoggedItem, ScanError, ScanRecord};
use kiosk_pipeline::status::{CatalogueHealth, ModelHealth, Part};
use kiosk_table::catalogue::Table;
use kiosk_vision::model::{Embedder, Session};

pub use self::calibrate::{calibrate_camera, lock_controls};

/// What reaches the I/O loop: an event for the core, or a report from the worker.
enum Input {
    Event(Event),
    Report(Report),
}

/// The display as the I/O loop drives it: shows a screen only when it changes; a failure is
/// reported to the core, which schedules the reopening.
struct Screens {
    display: Option<Box<dyn Display>>,
    shown: Option<Screen>,
}

impl Screens {
    /// Shows `screen` unless it is already shown; the error of a failing display.
    fn show(&mut self, screen: &Screen) -> Result<(), String> {
        if self.shown.as_ref() == Some(screen) {
            return Ok(());
        }
        if let Some(display) = self.display.as_mut() {
            display.show(screen).map_err(|e| format!("{e:#}"))?;
        }
        self.shown = Some(screen.clone());
        Ok(())
    }
}

/// systemd notifications (no-ops outside systemd).
fn notify(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!("sd_notify failed: {e}");
    }
}

/// Shows a start-up failure, and records it for monitoring, and returns it (the service exits;
/// systemd restarts it later).
fn startup_failure(
    title: &str,
    screens: &mut Screens,
    monitor: &mut Monitor,
    err: anyhow::Error,
) -> anyhow::Error {
    let _ = screens.show(&Screen::Message {
        title: title.into(),
        detail: format!("{err:#}"),
    });
    monitor.set_status(format!("failed: {title}: {err:#}"));
    monitor.publish();
    err
}

/// Runs the kiosk until SIGTERM/SIGINT (or the end of a stdin trigger). An error return means
/// the service cannot work (model, table, scan log or trigger unusable at start, a hung scan):
/// systemd restarts it.
pub fn run(config: &Config) -> Result<()> {
    // Signals first: one sent while the model loads waits in the queue instead of killing the
    // service.
    let (inputs_tx, inputs) = mpsc::channel();
    spawn_signal_thread(inputs_tx.clone())?;
    notify(&[sd_notify::NotifyState::Status(
        "starting: loading the model and the catalogue",
    )]);
    // The display next, so that every later failure can be shown.
    let (mut screens, display_fault, mut monitor) = open_display(config)?;
    let (embedder, session, table) = load_model_and_table(config, &mut screens, &mut monitor)?;
    let items = table.len();
    let mut scan_log = match &config.scan_log.path {
        Some(path) => Some(
            ScanLog::open(path, config.scan_log.max_bytes, config.scan_log.keep)
                .map_err(|e| startup_failure("Scan log", &mut screens, &mut monitor, e))?,
        ),
        None => None,
    };
    let trigger = device::open_trigger(&config.trigger, config.kiosk.debounce())
        .context("cannot open the trigger")
        .map_err(|e| startup_failure("No button", &mut screens, &mut monitor, e))?;
    match trigger {
        Some(trigger) => {
            tracing::info!("trigger: {} (and SIGUSR1)", trigger.describe());
            spawn_trigger_thread(trigger, inputs_tx.clone())?;
        }
        None => tracing::info!("trigger: SIGUSR1 only"),
    }

    let mut store = Store::default();
    let pipeline = Pipeline::assemble(config, session, table, &mut store);
    monitor.set_calibrated(pipeline.calibration().and_then(|c| c.taken.clone()));
    let requests = spawn_scanner(config, pipeline, inputs_tx)?;

    let settings = Settings {
        debounce: config.kiosk.debounce(),
        results_for: config.kiosk.results_for(),
        scan_timeout: config.kiosk.scan_timeout(),
        camera_retry_max: config.kiosk.camera_retry_max(),
        watchdog: sd_notify::watchdog_enabled().map(|w| w / 2),
        goes_with: config.recommend.as_ref().is_some_and(|r| r.goes_with),
    };
    let (core, effects) = Core::new(settings, items, Instant::now());
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&format!("ready: {items} items")),
    ]);
    let boot = boot_id();
    tracing::info!("ready: press to scan (boot {boot})");
    monitor.set_status("running");
    monitor.publish();

    let mut io = Io {
        boot,
        config,
        embedder: &embedder,
        requests,
        scan_log: &mut scan_log,
        screens,
        monitor,
        store,
        finished: None,
    };
    let mut pending: VecDeque<Event> = VecDeque::new();
    if let Some(fault) = display_fault {
        pending.push_back(Event::DisplayFailed(fault));
    }
    let result = io.serve(core, effects, &inputs, pending);
    io.stopped(result)
}

/// The display (a fault to show once running, if it cannot open) and the health monitor, with
/// the starting screen up.
fn open_display(config: &Config) -> Result<(Screens, Option<String>, Monitor)> {
    let (display, display_fault) = match device::open_display(&config.display) {
        Ok(Some(opened)) => {
            tracing::info!("display: {}", opened.describe());
            (Some(opened), None)
        }
        Ok(None) => {
            tracing::info!("no display configured: running headless");
            (None, None)
        }
        Err(e) => (None, Some(format!("{e:#}"))),
    };
    let mut monitor = Monitor::new(config.metrics.folder.as_deref())?;
    monitor.set_display(match (&display, &display_fault) {
        (Some(display), _) => Part::up(display.describe()),
        (None, Some(fault)) => Part::down(fault.clone()),
        (None, None) => Part::up("none configured (headless)"),
    });
    let mut screens = Screens {
        display,
        shown: None,
    };
    let _ = screens.show(&Screen::Message {
        title: "Starting".into(),
        detail: "Loading the model and the catalogue".into(),
    });
    Ok((screens, display_fault, monitor))
}

/// The model (its form picked for this CPU), a session of it and the catalogue; a failure is
/// shown on the screen and in the health files.
fn load_model_and_table(
    config: &Config,
    screens: &mut Screens,
    monitor: &mut Monitor,
) -> Result<(Embedder, Session, Table)> {
    let pick = config
        .model
        .pick()
        .map_err(|e| startup_failure("No model", screens, monitor, e))?;
    let embedder = Embedder::load(&pick.manifest)
        .map_err(|e| startup_failure("No model", screens, monitor, e))?;
    monitor.set_model(ModelHealth {
        name: embedder.manifest().name.clone(),
        fingerprint: embedder.fingerprint().to_string(),
    });
    let table = embedder
        .load_table(&config.catalogue.table)
        .map_err(|e| startup_failure("No catalogue", screens, monitor, e))?;
    let session = embedder
        .session()
        .map_err(|e| startup_failure("No model", screens, monitor, e))?;
    monitor.set_catalogue(CatalogueHealth {
        items: table.len(),
        fingerprint: table.content_id(),
    });
    tracing::info!(
        "model {} ({}; {}), catalogue {} with {} items",
        embedder.manifest().name,
        pick.manifest.display(),
        pick.reason,
        config.catalogue.table.display(),
        table.len()
    );
    Ok((embedder, session, table))
}

/// Starts the scanner thread on `pipeline`; its reports join the other inputs. Returns where
/// its requests go.
fn spawn_scanner(
    config: &Config,
    pipeline: Pipeline,
    inputs: Sender<Input>,
) -> Result<Sender<Request>> {
    let (requests, worker_requests) = mpsc::channel();
    let (reports_tx, reports) = mpsc::channel();
    let scanner = Scanner {
        camera_config: config.camera.clone(),
        camera: None,
        pipeline,
        scene: config.scene.clone(),
        pending: None,
    };
    let threads = config.model.thread_count();
    std::thread::Builder::new()
        .name("scanner".into())
        .spawn(move || scanner.serve(worker_requests, reports_tx, threads))
        .context("cannot start the scanner thread")?;
    std::thread::Builder::new()
        .name("reports".into())
        .spawn(move || {
            for report in reports {
                if inputs.send(Input::Report(report)).is_err() {
                    break;
                }
            }
        })
        .context("cannot start the report thread")?;
    Ok(requests)
}

/// What the I/O loop holds to perform the core's effects.
struct Io<'a> {
    /// This run of the service, in every scan log line.
    boot: String,
    config: &'a Config,
    embedder: &'a Embedder,
    requests: Sender<Request>,
    scan_log: &'a mut Option<ScanLog>,
    screens: Screens,
    /// The health for monitoring, written after each scan and watchdog tick.
    monitor: Monitor,
    /// The store's stock and trends last loaded well.
    store: Store,
    /// The last finished scan, until its log line is written.
    finished: Option<Box<ScanReport>>,
}

impl Io<'_> {
    /// Feeds the core its events (from `pending`, then `inputs` and the clock) and performs its
    /// effects, until it stops.
    fn serve(
        &mut self,
        mut core: Core,
        effects: Vec<Effect>,
        inputs: &mpsc::Receiver<Input>,
        mut pending: VecDeque<Event>,
    ) -> Result<()> {
        if let Some(result) = self.perform(effects, &mut pending) {
            return result;
        }
        loop {
            let now = Instant::now();
            let mut effects = core.tick(now);
            while let Some(event) = pending.pop_front() {
                self.observe(&event);
                effects.extend(core.on(event, now));
            }
            if let Some(result) = self.perform(effects, &mut pending) {
                let _ = self.screens.show(&core.screen(Instant::now()));
                return result;
            }
            if !pending.is_empty() {
                continue;
            }
            if let Err(e) = self.screens.show(&core.screen(now)) {
                pending.push_back(Event::DisplayFailed(e));
                continue;
            }
            // The health files after the screen: their syncs never delay what the shopper sees.
            self.monitor.publish_changes();
            let wait = core
                .next_wake(now)
                .saturating_duration_since(Instant::now());
            match inputs.recv_timeout(wait) {
                Ok(Input::Event(event)) => pending.push_back(event),
                Ok(Input::Report(report)) => pending.push_back(self.receive(report)),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(anyhow!("every event source has stopped"))
                }
            }
        }
    }

    /// Notes what `event` says of the kiosk's health (written once the screen is up).
    fn observe(&mut self, event: &Event) {
        let monitor = &mut self.monitor;
        match event {
            Event::CameraProbed(Ok(name)) => monitor.set_camera(Part::up(name.clone())),
            Event::CameraProbed(Err(message)) | Event::Scanned(Outcome::CameraLost(message)) => {
                monitor.set_camera(Part::down(message.clone()))
            }
            Event::Scanned(Outcome::Results(_) | Outcome::Nothing)
                if !monitor.health().camera.up =>
            {
                let detail = monitor.health().camera.detail.clone();
                monitor.set_camera(Part::up(detail));
            }
            Event::DisplayFailed(message) => monitor.set_display(Part::down(message.clone())),
            Event::DisplayBack(name) => monitor.set_display(Part::up(name.clone())),
            Event::Reloaded(Err(_)) => monitor.reload_failed(),
            Event::Calibrated(Ok(_)) => monitor.set_calibrated(
                load_calibration(self.config).and_then(|calibration| calibration.taken),
            ),
            _ => {}
        }
    }

    /// Records that the service stops, with `result`, and returns it.
    fn stopped(&mut self, result: Result<()>) -> Result<()> {
        match &result {
            Ok(()) => self.monitor.set_status("stopped"),
            Err(e) => self.monitor.set_status(format!("failed: {e:#}")),
        }
        self.monitor.publish();
        result
    }

    /// A worker's report, as the core's event (a finished scan is kept for its log line).
    fn receive(&mut self, report: Report) -> Event {
        match report {
            Report::Scanned(report) => {
                let outcome = match &report.outcome {
                    Ok(_) if report.found == Some(FoundBy::Nothing) => Outcome::Nothing,
                    Ok(_) if !report.garments.is_empty() => Outcome::Outfit(
                        report
                            .garments
                            .iter()
                            .map(|g| {
                                let ids = g.results.iter().map(|r| r.id.clone()).collect();
                                (g.label.clone(), ids)
                            })
                            .collect(),
                    ),
                    Ok(results) => {
                        Outcome::Results(results.iter().map(|r| (r.id.clone(), r.score)).collect())
                    }
                    Err(ScanError::CameraLost(message)) => Outcome::CameraLost(message.clone()),
                    Err(ScanError::BadFrame(message)) => Outcome::BadFrame(message.clone()),
                    Err(ScanError::Model(message) | ScanError::Other(message)) => {
                        Outcome::Failed(message.clone())
                    }
                };
                self.finished = Some(report);
                Event::Scanned(outcome)
            }
            Report::CameraProbed(result) => Event::CameraProbed(result),
            Report::WentWith(items) => {
                let listed: Vec<String> = items
                    .iter()
                    .map(|(id, category)| format!("{id} ({category})"))
                    .collect();
                tracing::info!("goes with: {}", listed.join(", "));
                Event::WentWith(items)
            }
            Report::EmptySceneTaken => Event::EmptySceneTaken(Ok(())),
            Report::Calibrated(result) => Event::Calibrated(result),
        }
    }

    /// Performs `effects` in order; events they produce go to `pending`. Returns the service's
    /// result when an effect ends it.
    fn perform(
        &mut self,
        effects: Vec<Effect>,
        pending: &mut VecDeque<Event>,
    ) -> Option<Result<()>> {
        for effect in effects {
            let request = match effect {
                Effect::Scan { pressed } => Request::Scan { pressed },
                Effect::ProbeCamera => Request::ProbeCamera,
                Effect::GoesWith => Request::GoesWith,
                Effect::CalibrateEmptyScene => Request::CalibrateEmptyScene,
                Effect::CalibrateCard => Request::CalibrateCard,
                Effect::ReloadTable => {
                    pending.push_back(Event::Reloaded(self.reload()));
                    continue;
                }
                Effect::LogScan { scan, coalesced } => {
                    if let Some(report) = self.finished.take() {
                        let scan = ScanKey {
                            boot: &self.boot,
                            scan,
                        };
                        log_scan(
                            self.scan_log.as_mut(),
                            &mut self.monitor,
                            scan,
                            *report,
                            coalesced,
                        );
                    }
                    continue;
                }
                Effect::ReopenDisplay => {
                    pending.push_back(self.reopen_display());
                    continue;
                }
                Effect::Notify(notice) => {
                    match notice {
                        Notice::Status(status) => {
                            notify(&[sd_notify::NotifyState::Status(&status)])
                        }
                        Notice::Watchdog => {
                            notify(&[sd_notify::NotifyState::Watchdog]);
                            self.monitor.publish();
                        }
                        Notice::Stopping => notify(&[sd_notify::NotifyState::Stopping]),
                    }
                    continue;
                }
                Effect::Exit(result) => return Some(result.map_err(|e| anyhow!(e))),
            };
            if self.requests.send(request).is_err() {
                return Some(Err(anyhow!("the scanner thread has stopped")));
            }
        }
        None
    }

    /// Loads the catalogue again; on success the worker gets it.
    fn reload(&mut self) -> Result<usize, String> {
        let path = &self.config.catalogue.table;
        match self.embedder.load_table(path) {
            Ok(table) => {
                let items = table.len();
                tracing::info!("reloaded {}: {items} items", path.display());
                self.monitor.set_catalogue(CatalogueHealth {
                    items,
                    fingerprint: table.content_id(),
                });
                let recommender = self.store.recommender_for(self.config, &table);
                let _ = self
                    .requests
                    .send(Request::SetTable(Arc::new(table), Box::new(recommender)));
                Ok(items)
            }
            Err(e) => {
                tracing::error!("reload refused, keeping the previous catalogue: {e:#}");
                Err(format!("{e:#}"))
            }
        }
    }

    /// Opens the display anew (an OLED is re-initialised); the screen is shown again on it.
    fn reopen_display(&mut self) -> Event {
        self.screens.display = None;
        self.screens.shown = None;
        match device::open_display(&self.config.display) {
            Ok(display) => {
                let name = display
                    .as_ref()
                    .map_or("none".into(), |display| display.describe());
                self.screens.display = display;
                Event::DisplayBack(name)
            }
            Err(e) => Event::DisplayFailed(format!("{e:#}")),
        }
    }
}

/// A run of the service: its start time and process id, so that two runs never share one.
fn boot_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}-{:x}", nanos / 1_000_000, std::process::id())
}

/// What names a scan for good: the run of the service and its number in that run.
#[derive(Clone, Copy)]
struct ScanKey<'a> {
    boot: &'a str,
    scan: u64,
}

/// The scan log's record of a finished scan.
fn scan_record(key: ScanKey, report: &ScanReport, coalesced: u32) -> ScanRecord {
    let logged = |items: &[Recommendation]| -> Vec<LoggedItem> {
        items
            .iter()
            .map(|r| LoggedItem {
                id: r.id.clone(),
                score: r.score,
                ranked: r.ranked.clone(),
            })
            .collect()
    };
    let (outcome, error, results) = match &report.outcome {
        Ok(results) if results.is_empty() && report.garments.is_empty() => {
            (record::Outcome::Nothing, None, Vec::new())
        }
        Ok(results) => (record::Outcome::Ok, None, logged(results)),
        Err(error) => (record::Outcome::Error, Some(error.clone()), Vec::new()),
    };
    let garments = report
        .garments
        .iter()
        .map(|g| LoggedGarment {
            class: g.class.clone(),
            bbox: g.bbox,
            share: g.share,
            cut_by_edge: g.cut_by_edge,
            colour: g.colour.to_string(),
            rgb: g.rgb,
            results: logged(&g.results),
        })
        .collect();
    ScanRecord {
        version: record::VERSION,
        time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        boot: key.boot.to_string(),
        scan: key.scan,
        outcome,
        error,
        // A frame like the empty scene was still looked at by the reference.
        region: report.found.map(|found| match found {
            FoundBy::Nothing => FoundBy::Reference,
            found => found,
        }),
        colour: report.colour.clone(),
        results,
        garments,
        note: report.note.clone(),
        coalesced,
        latency_ms: report.latency.clone(),
    }
}

/// Logs a finished scan to the scan log, synced, then to the journal (so that a scan the journal
/// reports is in the scan log, unless the journal says it could not be written).
fn log_scan(
    scan_log: Option<&mut ScanLog>,
    monitor: &mut Monitor,
    key: ScanKey,
    mut report: ScanReport,
    coalesced: u32,
) {
    report.latency.total = ms(report.pressed, Instant::now());
    let record = scan_record(key, &report, coalesced);
    if let Some(log) = scan_log {
        if let Err(e) = log.append(&record) {
            tracing::error!("scan {} not logged: {e:#}", record.scan);
        }
    }
    let latency = &record.latency_ms;
    monitor.record_scan(
        match record.outcome {
            record::Outcome::Ok => ScanOutcome::Ok,
            record::Outcome::Nothing => ScanOutcome::Nothing,
            record::Outcome::Error => ScanOutcome::Error,
        },
        &[
            ("capture", latency.capture / 1000.0),
            ("parse", latency.parse / 1000.0),
            ("foreground", latency.foreground / 1000.0),
            ("preprocess", latency.preprocess / 1000.0),
            ("embed", latency.embed / 1000.0),
            ("search", latency.search / 1000.0),
            ("total", latency.total / 1000.0),
        ],
    );
    journal_scan(&record);
}

/// The scan's lines in the journal: its note, each garment, and how it ended.
fn journal_scan(record: &ScanRecord) {
    let scan = record.scan;
    if let Some(note) = &record.note {
        tracing::info!("scan {scan}: {note}");
    }
    for g in &record.garments {
        let [x, y, w, h] = g.bbox;
        let ids: Vec<&str> = g.results.iter().map(|r| r.id.as_str()).collect();
        tracing::info!(
            "scan {scan}: {} ({}) at {w}x{h}+{x}+{y}{}: {}",
            g.class,
            g.colour,
            if g.cut_by_edge {
                ", cut by the frame's edge"
            } else {
                ""
            },
            ids.join(" ")
        );
    }
    let total = record.latency_ms.total;
    match (record.results.first(), &record.error) {
        (_, Some(error)) => tracing::warn!("scan {scan} failed: {}", error.message()),
        (Some(best), None) => {
            tracing::info!(
                "scan {scan}: {} ({:.3}) … in {total:.0} ms",
                best.id,
                best.score
            )
        }
        (None, None) if !record.garments.is_empty() => tracing::info!(
            "scan {scan}: an outfit of {} garments in {total:.0} ms",
            record.garments.len()
        ),
        (None, None) => tracing::info!("scan {scan}: nothing in front of the camera"),
    }
}

fn spawn_signal_thread(inputs: Sender<Input>) -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2])
            .context("cannot install signal handlers")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                let event = match signal {
                    SIGHUP => Event::ReloadRequested,
                    SIGUSR1 => Event::Press(Instant::now()),
                    SIGUSR2 => Event::CalibrateRequested,
                    SIGINT => Event::Shutdown("SIGINT"),
                    _ => Event::Shutdown("SIGTERM"),
                };
                if inputs.send(Input::Event(event)).is_err() {
                    break;
                }
            }
        })
        .context("cannot start the signal thread")?;
    Ok(())
}

fn spawn_trigger_thread(
    mut trigger: Box<dyn device::Trigger>,
    inputs: Sender<Input>,
) -> Result<()> {
    std::thread::Builder::new()
        .name("trigger".into())
        .spawn(move || {
            let mut backoff = Duration::from_millis(500);
            loop {
                let event = match trigger.wait() {
                    Ok(true) => {
                        backoff = Duration::from_millis(500);
                        Event::Press(Instant::now())
                    }
                    Ok(false) => Event::TriggerEnded,
                    Err(e) => {
                        tracing::warn!(
                            "{}: {e:#}; retrying in {:.1} s",
                            trigger.describe(),
                            backoff.as_secs_f64()
                        );
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                        continue;
                    }
                };
                let ended = event == Event::TriggerEnded;
                if inputs.send(Input::Event(event)).is_err() || ended {
                    break;
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
