//! The kiosk's health for monitoring: what it runs (version, model, catalogue, calibration),
//! whether its camera and display work, and what its scans came to. The kiosk writes it after
//! each scan and each watchdog tick as two files in `[metrics] folder`, atomically: Prometheus
//! text (`fashion-kiosk.prom`, for node-exporter's textfile collector) and JSON
//! (`fashion-kiosk.json`, which `fashion-kiosk uplink` publishes); `check --json` prints the same
//! JSON from its own checks.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kiosk_pipeline::status::{now_rfc3339, CatalogueHealth, Health, ModelHealth, Part, JSON_FILE};
use kiosk_util::files::write_atomically_with_mode;
use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry, TextEncoder,
};

/// The metrics file's name in the folder.
pub const PROMETHEUS_FILE: &str = "fashion-kiosk.prom";
/// How a scan ended, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanOutcome {
    Ok,
    Nothing,
    Error,
}

impl ScanOutcome {
    fn label(self) -> &'static str {
        match self {
            ScanOutcome::Ok => "ok",
            ScanOutcome::Nothing => "nothing",
            ScanOutcome::Error => "error",
        }
    }
}

/// Seconds each stage of a scan took, for the latency histograms.
pub type StageSeconds<'a> = &'a [(&'static str, f64)];

/// The kiosk's health as it runs, and the Prometheus metrics that go with it.
pub struct Monitor {
    health: Health,
    folder: Option<PathBuf>,
    registry: Registry,
    scans: IntCounterVec,
    stages: HistogramVec,
    camera_up: IntGauge,
    display_up: IntGauge,
    items: IntGauge,
    catalogue_info: GaugeVec,
    last_scan: Gauge,
    calibrated: Gauge,
    reload_failures: IntCounter,
    build_info: GaugeVec,
    running: IntGauge,
    /// The last error writing the files, so that a lasting one is logged once.
    write_error: Option<String>,
    /// Something changed since the files were last written.
    changed: bool,
}

/// Latency buckets, seconds: a Pi 5 scan takes about a second, a hung one up to the timeout.
const BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
];

impl Monitor {
    /// A monitor writing into `folder` (none: it only keeps the health in memory).
    pub fn new(folder: Option<&Path>) -> Result<Self> {
        let registry = Registry::new();
        let add = Registrar(&registry);
        let scans = add.metric(IntCounterVec::new(
            Opts::new("fashion_kiosk_scans_total", "Scans finished, by outcome"),
            &["outcome"],
        )?)?;
        let stages = add.metric(HistogramVec::new(
            HistogramOpts::new(
                "fashion_kiosk_scan_stage_seconds",
                "Time per stage of a scan (total: press to logged outcome)",
            )
            .buckets(BUCKETS.to_vec()),
            &["stage"],
        )?)?;
        let camera_up = add.int_gauge("fashion_kiosk_camera_up", "1 when the camera works")?;
        let display_up = add.int_gauge("fashion_kiosk_display_up", "1 when the display works")?;
        let items = add.int_gauge("fashion_kiosk_catalogue_items", "Items in the catalogue")?;
        let catalogue_info = add.info(
            "fashion_kiosk_catalogue_info",
            "The catalogue searched (its content id), always 1",
            &["fingerprint"],
        )?;
        let last_scan = add.gauge(
            "fashion_kiosk_last_scan_timestamp_seconds",
            "When the last scan finished (Unix time)",
        )?;
        let calibrated = add.gauge(
            "fashion_kiosk_calibrated_timestamp_seconds",
            "When the scene was calibrated (Unix time; 0 = not calibrated)",
        )?;
        let reload_failures = add.metric(IntCounter::new(
            "fashion_kiosk_reload_failures_total",
            "Catalogue reloads refused (the previous catalogue was kept)",
        )?)?;
        let build_info = add.info(
            "fashion_kiosk_build_info",
            "The build and model running, always 1",
            &["version", "model", "model_fingerprint"],
        )?;
        let running = add.int_gauge(
            "fashion_kiosk_running",
            "1 while the service runs; 0 when it stopped or could not start",
        )?;
        add.gauge(
            "fashion_kiosk_start_time_seconds",
            "When the service started (Unix time)",
        )?
        .set(unix_seconds(std::time::SystemTime::now()));
        // Every outcome is exported from the start, at 0.
        for outcome in [ScanOutcome::Ok, ScanOutcome::Nothing, ScanOutcome::Error] {
            scans.with_label_values(&[outcome.label()]);
        }
        Ok(Monitor {
            health: Health {
                version: env!("CARGO_PKG_VERSION").into(),
                started: Some(now_rfc3339()),
                updated: now_rfc3339(),
                status: "starting".into(),
                camera: Part::down("not opened yet"),
                display: Part::down("not opened yet"),
                ..Health::default()
            },
            folder: folder.map(Path::to_path_buf),
            registry,
            scans,
            stages,
            camera_up,
            display_up,
            items,
            catalogue_info,
            last_scan,
            calibrated,
            reload_failures,
            build_info,
            running,
            write_error: None,
            changed: true,
        })
    }

    pub fn set_model(&mut self, model: ModelHealth) {
        self.changed = true;
        self.build_info.reset();
        self.build_info
            .with_label_values(&[&self.health.version, &model.name, &model.fingerprint])
            .set(1.0);
        self.health.model = Some(model);
    }

    /// `running`, `stopped`, or `failed: …` (see [`Health::status`]).
    pub fn set_status(&mut self, status: impl Into<String>) {
        self.changed = true;
        self.health.status = status.into();
        self.running.set((self.health.status == "running").into());
    }

    /// The health as it stands.
    pub fn health(&self) -> &Health {
        &self.health
    }

    pub fn set_catalogue(&mut self, catalogue: CatalogueHealth) {
        self.changed = true;
        self.catalogue_info.reset();
        self.catalogue_info
            .with_label_values(&[&catalogue.fingerprint])
            .set(1.0);
        self.items.set(catalogue.items as i64);
        self.health.catalogue = Some(catalogue);
    }

    pub fn reload_failed(&mut self) {
        self.changed = true;
        self.reload_failures.inc();
        self.health.reload_failures += 1;
    }

    /// The calibration's time (RFC 3339), or `None` when the scene is not calibrated.
    pub fn set_calibrated(&mut self, taken: Option<String>) {
        self.changed = true;
        let seconds = taken
            .as_deref()
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
            .map_or(0.0, unix_seconds);
        self.calibrated.set(seconds);
        self.health.calibrated = taken;
    }

    pub fn set_camera(&mut self, camera: Part) {
        self.changed = true;
        self.camera_up.set(camera.up.into());
        self.health.camera = camera;
    }

    pub fn set_display(&mut self, display: Part) {
        self.changed = true;
        self.display_up.set(display.up.into());
        self.health.display = display;
    }

    /// Counts a finished scan and its stages' times.
    pub fn record_scan(&mut self, outcome: ScanOutcome, stages: StageSeconds) {
        self.changed = true;
        self.scans.with_label_values(&[outcome.label()]).inc();
        let counts = &mut self.health.scans;
        *match outcome {
            ScanOutcome::Ok => &mut counts.ok,
            ScanOutcome::Nothing => &mut counts.nothing,
            ScanOutcome::Error => &mut counts.error,
        } += 1;
        for (stage, seconds) in stages {
            self.stages.with_label_values(&[stage]).observe(*seconds);
        }
        let now = std::time::SystemTime::now();
        self.last_scan.set(unix_seconds(now));
        self.health.last_scan = Some(humantime::format_rfc3339_millis(now).to_string());
    }

    /// The metrics in Prometheus text format.
    pub fn prometheus_text(&self) -> Result<String> {
        let mut text = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut text)
            .context("cannot encode the metrics")?;
        String::from_utf8(text).context("cannot encode the metrics")
    }

    /// Writes both files if a folder is configured; an error is logged (once while it lasts),
    /// never fatal: monitoring must not stop the kiosk.
    pub fn publish(&mut self) {
        self.changed = false;
        match self.write() {
            Ok(()) => self.write_error = None,
            Err(e) => {
                let message = format!("{e:#}");
                if self.write_error.as_ref() != Some(&message) {
                    tracing::warn!("metrics not written: {message}");
                }
                self.write_error = Some(message);
            }
        }
    }

    /// [`Monitor::publish`]es if anything changed since the files were last written.
    pub fn publish_changes(&mut self) {
        if self.changed {
            self.publish();
        }
    }

    /// Writes both files (readable by every user: node-exporter runs as its own), if a folder
    /// is configured.
    pub fn write(&mut self) -> Result<()> {
        let Some(folder) = &self.folder else {
            return Ok(());
        };
        std::fs::create_dir_all(folder)
            .with_context(|| format!("cannot create metrics folder {}", folder.display()))?;
        self.health.updated = now_rfc3339();
        let json = serde_json::to_vec_pretty(&self.health).context("cannot encode the health")?;
        write_atomically_with_mode(&folder.join(JSON_FILE), &json, 0o644)?;
        write_atomically_with_mode(
            &folder.join(PROMETHEUS_FILE),
            self.prometheus_text()?.as_bytes(),
            0o644,
        )
    }
}

fn unix_seconds(time: std::time::SystemTime) -> f64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Makes metrics registered in a registry (which keeps a handle to each).
struct Registrar<'r>(&'r Registry);

impl Registrar<'_> {
    fn metric<C>(&self, collector: C) -> Result<C>
    where
        C: prometheus::core::Collector + Clone + 'static,
    {
        self.0.register(Box::new(collector.clone()))?;
        Ok(collector)
    }

    fn gauge(&self, name: &str, help: &str) -> Result<Gauge> {
        self.metric(Gauge::new(name, help)?)
    }

    fn int_gauge(&self, name: &str, help: &str) -> Result<IntGauge> {
        self.metric(IntGauge::new(name, help)?)
    }

    /// A gauge per label set, set to 1 for what runs.
    fn info(&self, name: &str, help: &str, labels: &[&str]) -> Result<GaugeVec> {
        self.metric(GaugeVec::new(Opts::new(name, help), labels)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiosk_pipeline::status::{read, ScanCounts};

    fn model() -> ModelHealth {
        ModelHealth {
            name: "tiny".into(),
            fingerprint: "ab".repeat(32),
        }
    }

    #[test]
    fn scans_and_devices_show_in_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut monitor = Monitor::new(Some(dir.path())).unwrap();
        monitor.set_model(model());
        monitor.set_status("running");
        monitor.set_catalogue(CatalogueHealth {
            items: 42,
            fingerprint: "0badcafe".into(),
        });
        monitor.set_camera(Part::up("folder photos"));
        monitor.set_display(Part::down("no OLED at 0x3c"));
        monitor.record_scan(ScanOutcome::Ok, &[("embed", 0.5), ("total", 0.6)]);
        monitor.record_scan(ScanOutcome::Ok, &[("embed", 0.7), ("total", 0.8)]);
        monitor.record_scan(ScanOutcome::Error, &[("total", 0.01)]);
        monitor.reload_failed();
        monitor.write().unwrap();

        let health = read(dir.path()).unwrap();
        assert_eq!(
            health.scans,
            ScanCounts {
                ok: 2,
                nothing: 0,
                error: 1
            }
        );
        assert_eq!(health.catalogue.unwrap().items, 42);
        assert!(health.camera.up && !health.display.up);
        assert_eq!(health.reload_failures, 1);
        assert_eq!(health.model, Some(model()));

        let text = std::fs::read_to_string(dir.path().join(PROMETHEUS_FILE)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for expected in [
            "fashion_kiosk_scans_total{outcome=\"ok\"} 2",
            "fashion_kiosk_scans_total{outcome=\"nothing\"} 0",
            "fashion_kiosk_scans_total{outcome=\"error\"} 1",
            "fashion_kiosk_camera_up 1",
            "fashion_kiosk_display_up 0",
            "fashion_kiosk_catalogue_items 42",
            "fashion_kiosk_catalogue_info{fingerprint=\"0badcafe\"} 1",
            "fashion_kiosk_reload_failures_total 1",
            "fashion_kiosk_running 1",
            "fashion_kiosk_scan_stage_seconds_count{stage=\"embed\"} 2",
            "fashion_kiosk_scan_stage_seconds_bucket{stage=\"total\",le=\"0.5\"} 1",
        ] {
            assert!(
                lines.contains(&expected),
                "no line {expected:?} in:\n{text}"
            );
        }
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join(PROMETHEUS_FILE))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o644);
    }
}
