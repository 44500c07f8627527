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
use serde::Serialize;

use self::core::{Core, Effect, Event, Notice, Outcome, Settings};
use self::scanner::{Report, Request, ScanFailure, ScanLatency, ScanReport, Scanner};
use crate::device::{self, Display, Screen};
use crate::health::{Monitor, ScanOutcome};
use crate::scanlog::ScanLog;
use kiosk_pipeline::config::{Config, OutfitConfig};
use kiosk_pipeline::outfit::OutfitScanner;
use kiosk_pipeline::query::{ms, FoundBy};
use kiosk_pipeline::recommend::stock::Stock;
use kiosk_pipeline::recommend::trends::Trends;
use kiosk_pipeline::recommend::{Ranked, Recommender};
use kiosk_pipeline::status::{CatalogueHealth, ModelHealth, Part};
use kiosk_table::catalogue::Table;
use kiosk_vision::calibration::Calibration;
use kiosk_vision::colour;
use kiosk_vision::model::Embedder;

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

    let pick = config
        .model
        .pick()
        .map_err(|e| startup_failure("No model", &mut screens, &mut monitor, e))?;
    let embedder = Embedder::load(&pick.manifest)
        .map_err(|e| startup_failure("No model", &mut screens, &mut monitor, e))?;
    monitor.set_model(ModelHealth {
        name: embedder.manifest().name.clone(),
        fingerprint: embedder.fingerprint().to_string(),
    });
    let table = embedder
        .load_table(&config.catalogue.table)
        .map_err(|e| startup_failure("No catalogue", &mut screens, &mut monitor, e))?;
    let session = embedder
        .session()
        .map_err(|e| startup_failure("No model", &mut screens, &mut monitor, e))?;
    let items = table.len();
    monitor.set_catalogue(CatalogueHealth {
        items,
        fingerprint: table.content_id(),
    });
    tracing::info!(
        "model {} ({}; {}), catalogue {} with {items} items",
        embedder.manifest().name,
        pick.manifest.display(),
        pick.reason,
        config.catalogue.table.display()
    );
    let calibration = load_calibration(config);
    monitor.set_calibrated(calibration.as_ref().and_then(|c| c.taken.clone()));
    let colour = calibration
        .as_ref()
        .map(|c| c.correction(&config.scene.colour()))
        .unwrap_or_default();
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

    let mut store = StoreData::default();
    let recommender = recommender_for(config, &table, &mut store);
    let (requests, worker_requests) = mpsc::channel();
    let (reports_tx, reports) = mpsc::channel();
    let outfit = config.outfit.as_ref().and_then(|settings| {
        load_outfits(settings, &table)
            .inspect_err(|e| {
                tracing::error!("outfits off, every scan looks up the whole frame: {e:#}")
            })
            .ok()
    });
    let scanner = Scanner {
        camera_config: config.camera.clone(),
        camera: None,
        session,
        table: Arc::new(table),
        recommender,
        last_match: None,
        outfit,
        top: config.kiosk.top,
        scene: config.scene.clone(),
        calibration,
        colour,
        pending: None,
    };
    let threads = config.model.thread_count();
    std::thread::Builder::new()
        .name("scanner".into())
        .spawn(move || scanner.serve(worker_requests, reports_tx, threads))
        .context("cannot start the scanner thread")?;
    // The worker's reports join the other inputs.
    let forward = inputs_tx.clone();
    std::thread::Builder::new()
        .name("reports".into())
        .spawn(move || {
            for report in reports {
                if forward.send(Input::Report(report)).is_err() {
                    break;
                }
            }
        })
        .context("cannot start the report thread")?;
    drop(inputs_tx);

    let settings = Settings {
        debounce: config.kiosk.debounce(),
        results_for: config.kiosk.results_for(),
        scan_timeout: config.kiosk.scan_timeout(),
        camera_retry_max: config.kiosk.camera_retry_max(),
        watchdog: sd_notify::watchdog_enabled().map(|w| w / 2),
        goes_with: config.recommend.as_ref().is_some_and(|r| r.goes_with),
    };
    let (mut core, effects) = Core::new(settings, items, Instant::now());
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
    if let Some(result) = io.perform(effects, &mut pending) {
        return io.stopped(result);
    }
    loop {
        let now = Instant::now();
        let mut effects = core.tick(now);
        while let Some(event) = pending.pop_front() {
            io.observe(&event);
            effects.extend(core.on(event, now));
        }
        if let Some(result) = io.perform(effects, &mut pending) {
            let _ = io.screens.show(&core.screen(Instant::now()));
            return io.stopped(result);
        }
        if !pending.is_empty() {
            continue;
        }
        if let Err(e) = io.screens.show(&core.screen(now)) {
            pending.push_back(Event::DisplayFailed(e));
            continue;
        }
        // The health files after the screen: their syncs never delay what the shopper sees.
        io.monitor.publish_changes();
        let wait = core
            .next_wake(now)
            .saturating_duration_since(Instant::now());
        match inputs.recv_timeout(wait) {
            Ok(Input::Event(event)) => pending.push_back(event),
            Ok(Input::Report(report)) => pending.push_back(io.receive(report)),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                return io.stopped(Err(anyhow!("every event source has stopped")))
            }
        }
    }
}

/// The empty scene's calibration, if there is one: a bad one is reported, and the kiosk runs
/// without it.
fn load_calibration(config: &Config) -> Option<Calibration> {
    let path = config.scene.reference.as_ref()?;
    match Calibration::load(path) {
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
    }
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
    store: StoreData,
    /// The last finished scan, until its log line is written.
    finished: Option<Box<ScanReport>>,
}

impl Io<'_> {
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
                    Err(ScanFailure::CameraLost(message)) => Outcome::CameraLost(message.clone()),
                    Err(ScanFailure::BadFrame(message)) => Outcome::BadFrame(message.clone()),
                    Err(ScanFailure::Model(message)) => Outcome::Failed(message.clone()),
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
                let recommender = recommender_for(self.config, &table, &mut self.store);
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

/// The store's stock and co-scan trends as last loaded well, with the content id of the table
/// they were read against: a file that fails to load later leaves these in use.
#[derive(Default)]
struct StoreData {
    stock: Option<(String, Arc<Stock>)>,
    trends: Option<(String, Arc<Trends>)>,
}

/// Loads `what` from `path` for `table` into `slot`; a failure is logged, and the previous one is
/// kept when it was read against the same table.
fn load_into<T>(
    slot: &mut Option<(String, Arc<T>)>,
    table: &Table,
    what: &str,
    path: &std::path::Path,
    load: impl FnOnce(&std::path::Path, &Table) -> Result<T>,
    describe: impl FnOnce(&T) -> String,
) {
    let id = table.content_id();
    match load(path, table) {
        Ok(loaded) => {
            tracing::info!("{what}: {}", describe(&loaded));
            *slot = Some((id, Arc::new(loaded)));
        }
        Err(e) => {
            if slot.as_ref().is_some_and(|(kept, _)| *kept == id) {
                tracing::error!("{e:#}; keeping the {what} loaded before");
            } else {
                tracing::error!("{e:#}; recommending without a {what} file");
                *slot = None;
            }
        }
    }
}

/// The garment parser under `[outfit]`, with a warning for each configured category the
/// catalogue does not have.
fn load_outfits(settings: &OutfitConfig, table: &Table) -> Result<OutfitScanner> {
    let scanner = OutfitScanner::load(settings)?;
    for unknown in scanner.outfits.unknown_categories(table) {
        tracing::warn!("outfits: the catalogue has no {unknown}");
    }
    tracing::info!(
        "outfits: garment parser {} ({}): a person's garments are looked up one by one",
        scanner.outfits.parser.manifest().name,
        scanner.outfits.parser.manifest_path().display()
    );
    Ok(scanner)
}

/// The recommender for `table` under `[recommend]`, with the store's stock and trends (loaded
/// anew; see [`StoreData`]); `None` without a `[recommend]` section.
fn recommender_for(config: &Config, table: &Table, store: &mut StoreData) -> Option<Recommender> {
    let settings = config.recommend.clone()?;
    if let Some(path) = &settings.stock {
        load_into(&mut store.stock, table, "stock", path, Stock::load, |s| {
            if s.unknown_ids > 0 {
                tracing::warn!(
                    "stock {}: {} of {} rows name ids the catalogue does not hold",
                    path.display(),
                    s.unknown_ids,
                    s.rows
                );
            }
            format!(
                "{} ({} rows, {} items out of stock)",
                path.display(),
                s.rows,
                s.out_of_stock()
            )
        });
    }
    if let Some(path) = &settings.trends {
        load_into(
            &mut store.trends,
            table,
            "trends",
            path,
            Trends::load,
            |t| {
                format!(
                    "{} ({} sessions, {} scans)",
                    path.display(),
                    t.sessions,
                    t.scans
                )
            },
        );
    }
    Some(Recommender::new(
        settings,
        table,
        store.stock.as_ref().map(|(_, s)| s.clone()),
        store.trends.as_ref().map(|(_, t)| t.clone()),
    ))
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

/// One line of the scan log.
#[derive(Serialize)]
struct ScanRecord<'a> {
    time: String,
    /// The run of the service (scan numbers start again at 1 in each).
    boot: &'a str,
    scan: u64,
    outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// How the item was found in the frame ("none" when the scan failed before looking).
    region: &'static str,
    /// The colour correction applied to what was embedded, and where it came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    colour: Option<&'a colour::Applied>,
    results: &'a [LoggedItem<'a>],
    /// A person's garments, each with its class, box, colour and results.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    garments: &'a [LoggedGarment<'a>],
    /// Why an outfit scan looked up the whole frame instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<&'a str>,
    /// Presses that arrived during this scan and were merged into one queued scan.
    coalesced: u32,
    latency_ms: &'a ScanLatency,
}

#[derive(Serialize)]
struct LoggedItem<'a> {
    id: &'a str,
    score: f32,
    /// Its source and score parts, when `[recommend]` ranked it.
    #[serde(flatten)]
    ranked: Option<&'a Ranked>,
}

#[derive(Serialize)]
struct LoggedGarment<'a> {
    class: &'a str,
    bbox: [u32; 4],
    share: f32,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    cut_by_edge: bool,
    colour: &'a str,
    rgb: [u8; 3],
    results: Vec<LoggedItem<'a>>,
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
    let scan = key.scan;
    report.latency.total = ms(report.pressed, Instant::now());
    let (outcome, error, results): (_, _, Vec<LoggedItem>) = match &report.outcome {
        Ok(results) => {
            let results: Vec<LoggedItem> = results
                .iter()
                .map(|r| LoggedItem {
                    id: &r.id,
                    score: r.score,
                    ranked: r.ranked.as_ref(),
                })
                .collect();
            let outcome = if results.is_empty() && report.garments.is_empty() {
                "nothing"
            } else {
                "ok"
            };
            (outcome, None, results)
        }
        Err(
            ScanFailure::CameraLost(message)
            | ScanFailure::BadFrame(message)
            | ScanFailure::Model(message),
        ) => ("error", Some(message.clone()), Vec::new()),
    };
    let garments: Vec<LoggedGarment> = report
        .garments
        .iter()
        .map(|g| LoggedGarment {
            class: &g.class,
            bbox: g.bbox,
            share: g.share,
            cut_by_edge: g.cut_by_edge,
            colour: g.colour,
            rgb: g.rgb,
            results: g
                .results
                .iter()
                .map(|r| LoggedItem {
                    id: &r.id,
                    score: r.score,
                    ranked: r.ranked.as_ref(),
                })
                .collect(),
        })
        .collect();
    if let Some(log) = scan_log {
        // A frame like the empty scene was still looked at by the reference.
        let region = match report.found {
            Some(FoundBy::Nothing) => FoundBy::Reference.name(),
            Some(found) => found.name(),
            None => "none",
        };
        let record = ScanRecord {
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            boot: key.boot,
            scan,
            outcome,
            error: error.clone(),
            region,
            colour: report.colour.as_ref(),
            results: &results,
            garments: &garments,
            note: report.note.as_deref(),
            coalesced,
            latency_ms: &report.latency,
        };
        if let Err(e) = log.append(&record) {
            tracing::error!("scan {scan} not logged: {e:#}");
        }
    }
    let latency = &report.latency;
    monitor.record_scan(
        match outcome {
            "ok" => ScanOutcome::Ok,
            "nothing" => ScanOutcome::Nothing,
            _ => ScanOutcome::Error,
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
    if let Some(note) = &report.note {
        tracing::info!("scan {scan}: {note}");
    }
    for g in &garments {
        let [x, y, w, h] = g.bbox;
        let ids: Vec<&str> = g.results.iter().map(|r| r.id).collect();
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
    match (results.first(), error) {
        (None, None) if !garments.is_empty() => tracing::info!(
            "scan {scan}: an outfit of {} garments in {:.0} ms",
            garments.len(),
            report.latency.total
        ),
        (Some(best), _) => tracing::info!(
            "scan {scan}: {} ({:.3}) … in {:.0} ms",
            best.id,
            best.score,
            report.latency.total
        ),
        (None, None) => tracing::info!("scan {scan}: nothing in front of the camera"),
        (None, Some(message)) => tracing::warn!("scan {scan} failed: {message}"),
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
