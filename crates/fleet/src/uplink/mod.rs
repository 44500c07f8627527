//! `fashion-kiosk uplink`: the kiosk's link to a fleet, as its own service (the scanning service
//! has no network). It follows the scan log as an outbox and publishes each scan to an MQTT
//! broker at least once, in order, and the kiosk's availability, state and stats.
//!
//! Topics, under `PREFIX/KIOSK_ID/`:
//! - `scans`: each scan log line, QoS 1, not retained, with `kiosk` and a stable `key`
//!   (`KIOSK_ID/BOOT/SCAN`) so that consumers can drop the duplicates a reconnection may bring;
//! - `available`: `online` (retained) on connect, `offline` as the last will and on stop;
//! - `state`: retained JSON (version, model and catalogue fingerprints, items, calibration time,
//!   camera and display health, from the kiosk's health file), on every connect and change;
//! - `stats`: every `stats_secs`, the scans of that window by outcome and latency percentiles.
//!
//! The checkpoint (see [`outbox`]) moves only when the broker acknowledges a scan, so nothing is
//! lost across broker outages, restarts, power cuts or log rotation; a connection lost resends
//! everything unacknowledged.

pub mod acks;
pub mod outbox;

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, Incoming, LastWill,
    MqttOptions, Outgoing, QoS, TlsConfiguration, Transport,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::signal::unix::{signal, Signal, SignalKind};

use self::acks::Acks;
use self::outbox::{Checkpoint, Outbox, Position, SaveReport, SaveSchedule};
use kiosk_pipeline::config::{Config, UplinkConfig};
use kiosk_pipeline::record::{Outcome, ScanRecord};
use kiosk_pipeline::status::{self as health, Part};

/// Scans published and not yet acknowledged, at most.
const WINDOW: usize = 64;
/// How often the log is looked at for new lines.
const POLL: Duration = Duration::from_millis(50);
/// How often the kiosk's health file is looked at.
const HEALTH_POLL: Duration = Duration::from_secs(1);
/// The checkpoint is stored at most this often while scans are acknowledged (and whenever the
/// backlog is done): a crash in between resends at most this much.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);
/// While the checkpoint cannot be stored: how often it is retried, and reported.
const CHECKPOINT_RETRY: Duration = Duration::from_secs(5);
const CHECKPOINT_REPORT_EVERY: Duration = Duration::from_secs(60);
/// How long to wait for the broker's CONNACK.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// The uplink's settings, resolved from the config.
struct Settings {
    uplink: UplinkConfig,
    kiosk_id: String,
    client_id: String,
    log: PathBuf,
    keep: u32,
    health_folder: Option<PathBuf>,
    credentials: Option<Credentials>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Settings {
    fn topic(&self, leaf: &str) -> String {
        format!("{}/{}/{leaf}", self.uplink.prefix, self.kiosk_id)
    }
}

/// The broker account, from its own file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Credentials {
    username: String,
    password: String,
}

fn load_credentials(path: &std::path::Path) -> Result<Credentials> {
    use std::os::unix::fs::PermissionsExt;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read uplink credentials {}", path.display()))?;
    let mode = std::fs::metadata(path)?.permissions().mode();
    if mode & 0o004 != 0 {
        tracing::warn!(
            "uplink credentials {} are readable by every user (mode {:o}): chmod 640 it",
            path.display(),
            mode & 0o777
        );
    }
    toml::from_str(&text).map_err(|e| {
        anyhow!(
            "uplink credentials {}: {} (expected `username = \"…\"` and `password = \"…\"`)",
            path.display(),
            e.to_string().trim_end()
        )
    })
}

fn tls_config(uplink: &UplinkConfig) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    match &uplink.ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read uplink.ca_file {}", path.display()))?;
            let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
                .collect::<Result<_, _>>()
                .with_context(|| format!("uplink.ca_file {} is not PEM", path.display()))?;
            if certs.is_empty() {
                bail!("uplink.ca_file {} holds no certificate", path.display());
            }
            for cert in certs {
                roots.add(cert).with_context(|| {
                    format!(
                        "uplink.ca_file {}: a certificate is not valid",
                        path.display()
                    )
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                bail!(
                    "no trusted certificate authorities on this system for TLS: set uplink.ca_file"
                );
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS: no protocol version")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The host's name (gethostname(2): the unit's `ProcSubset=pid` hides
/// `/proc/sys/kernel/hostname`), the default kiosk id.
fn host_name() -> Result<String> {
    let mut name = [0u8; 256];
    // SAFETY: the buffer is valid for writes of its length, which is what is passed.
    let status = unsafe { libc::gethostname(name.as_mut_ptr().cast(), name.len()) };
    if status != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot read the host name");
    }
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    let name = String::from_utf8_lossy(&name[..end]).trim().to_string();
    if name.is_empty() || name == "(none)" {
        bail!("the host has no name: set uplink.kiosk_id");
    }
    Ok(name)
}

impl Settings {
    fn from_config(config: &Config) -> Result<Self> {
        let uplink = config
            .uplink
            .clone()
            .context("the config has no [uplink] section: name the broker there")?;
        let log = config
            .scan_log
            .path
            .clone()
            .context("the config has no scan log ([scan_log] path): the uplink publishes it")?;
        let kiosk_id = match &uplink.kiosk_id {
            Some(id) => id.clone(),
            None => host_name()?
                .chars()
                .map(|c| if "/+#".contains(c) { '_' } else { c })
                .collect(),
        };
        let client_id = uplink
            .client_id
            .clone()
            .unwrap_or_else(|| format!("fashion-kiosk-{kiosk_id}"));
        let credentials = uplink
            .credentials
            .as_deref()
            .map(load_credentials)
            .transpose()?;
        let tls = uplink.tls.then(|| tls_config(&uplink)).transpose()?;
        Ok(Settings {
            kiosk_id,
            client_id,
            log,
            keep: config.scan_log.keep,
            health_folder: config.metrics.folder.clone(),
            credentials,
            tls,
            uplink,
        })
    }

    fn options(&self) -> MqttOptions {
        let mut options =
            MqttOptions::new(&self.client_id, &self.uplink.broker, self.uplink.port());
        options
            .set_keep_alive(Duration::from_secs(self.uplink.keep_alive_secs))
            .set_clean_session(true)
            .set_inflight((WINDOW + 16) as u16)
            .set_last_will(LastWill::new(
                self.topic("available"),
                "offline",
                QoS::AtLeastOnce,
                true,
            ));
        if let Some(credentials) = &self.credentials {
            options.set_credentials(&credentials.username, &credentials.password);
        }
        if let Some(tls) = &self.tls {
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                tls.clone(),
            )));
        }
        options
    }
}

/// Runs the uplink until SIGTERM or SIGINT.
pub fn run(config: &Config) -> Result<()> {
    let settings = Settings::from_config(config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the uplink's runtime")?;
    runtime.block_on(serve(settings))
}

/// What a session ended with.
enum Ended {
    /// Asked to stop.
    Stopped,
    /// The connection failed; whether it had been up (the backoff starts again).
    Failed(anyhow::Error, bool),
}

async fn serve(settings: Settings) -> Result<()> {
    let mut stop = Stop::new()?;
    let checkpoint_path = settings.uplink.checkpoint.clone();
    let checkpoint = match Checkpoint::load(&checkpoint_path) {
        Ok(checkpoint) => checkpoint,
        Err(e) => {
            tracing::error!("{e:#}; publishing the scan log from its start (duplicates follow)");
            Checkpoint::default()
        }
    };
    // The checkpoint folder must be writable before anything is published.
    checkpoint.save(&checkpoint_path)?;
    let mut uplink = Uplink {
        outbox: Outbox::new(&settings.log, settings.keep),
        checkpoint,
        saves: SaveSchedule::new(
            CHECKPOINT_EVERY,
            CHECKPOINT_RETRY,
            CHECKPOINT_REPORT_EVERY,
            Instant::now(),
        ),
        dirty: false,
        window: StatsWindow::default(),
        published: 0,
        settings,
    };
    tracing::info!(
        "uplink: {} → {}:{} as {} (topics {}/…), checkpoint {}",
        uplink.settings.log.display(),
        uplink.settings.uplink.broker,
        uplink.settings.uplink.port(),
        uplink.settings.client_id,
        uplink.settings.topic("").trim_end_matches('/'),
        checkpoint_path.display()
    );
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let retry_max = Duration::from_secs_f64(uplink.settings.uplink.retry_max_secs);
    let mut backoff = Duration::from_secs(1);
    loop {
        match uplink.session(&mut stop).await {
            Ended::Stopped => break,
            Ended::Failed(e, was_up) => {
                if was_up {
                    backoff = Duration::from_secs(1);
                }
                tracing::error!(
                    "broker {}:{}: {e:#}; retrying in {:.0} s",
                    uplink.settings.uplink.broker,
                    uplink.settings.uplink.port(),
                    backoff.as_secs_f64()
                );
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&format!(
                    "broker unreachable: {e:#}"
                ))]);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.wait() => break,
                }
                backoff = (backoff * 2).min(retry_max);
            }
        }
    }
    uplink.save_checkpoint()?;
    tracing::info!("uplink stopped: {} scans published", uplink.published);
    Ok(())
}

/// SIGTERM and SIGINT.
struct Stop {
    term: Signal,
    int: Signal,
}

impl Stop {
    fn new() -> Result<Self> {
        Ok(Stop {
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
        })
    }
    async fn wait(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

struct Uplink {
    settings: Settings,
    outbox: Outbox,
    checkpoint: Checkpoint,
    saves: SaveSchedule,
    /// The checkpoint moved since it was stored.
    dirty: bool,
    window: StatsWindow,
    published: u64,
}

impl Uplink {
    fn save_checkpoint(&mut self) -> Result<()> {
        if self.dirty {
            self.checkpoint.save(&self.settings.uplink.checkpoint)?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Stores the checkpoint when it moved and the schedule says so; failures are reported
    /// sparingly (the acknowledged scans are resent after a restart, nothing is lost).
    fn save_checkpoint_when_due(&mut self, in_flight: usize) {
        let now = Instant::now();
        if !self.dirty || !self.saves.due(now, in_flight) {
            return;
        }
        let result = self.save_checkpoint();
        match self.saves.tried(now, &result) {
            Some(SaveReport::Failing { error, times: 1 }) => tracing::error!(
                "{error}; retrying every {} s (a restart meanwhile resends what was acknowledged since)",
                CHECKPOINT_RETRY.as_secs()
            ),
            Some(SaveReport::Failing { error, times }) => {
                tracing::error!("{error} (failed {times} more times)")
            }
            Some(SaveReport::Recovered { failures }) => tracing::info!(
                "checkpoint {} stored again after {failures} failures",
                self.settings.uplink.checkpoint.display()
            ),
            None => {}
        }
    }

    /// Notes an acknowledgement: the checkpoint moves over a run of acknowledged scans.
    fn acknowledged(&mut self, acks: &mut Acks, pkid: u16) {
        if let Some(advance) = acks.acknowledged(pkid) {
            self.published += advance.scans as u64;
            self.checkpoint.position = Some(advance.end);
            self.checkpoint.last_key = Some(advance.key);
            self.dirty = true;
        }
    }

    /// One connection: connect, announce, publish until it fails or a stop is asked.
    async fn session(&mut self, stop: &mut Stop) -> Ended {
        let (client, mut events) = AsyncClient::new(self.settings.options(), 2 * WINDOW + 32);
        tokio::select! {
            connected = tokio::time::timeout(CONNECT_TIMEOUT, connect(&mut events)) => {
                match connected {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Ended::Failed(e, false),
                    Err(_) => return Ended::Failed(anyhow!("no answer to CONNECT in {} s", CONNECT_TIMEOUT.as_secs()), false),
                }
            }
            _ = stop.wait() => return Ended::Stopped,
        }
        tracing::info!(
            "connected to {}:{}",
            self.settings.uplink.broker,
            self.settings.uplink.port()
        );
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Status("connected")]);
        match self.announce(&client).await {
            Ok(acks) => self.run_connected(client, events, acks, stop).await,
            Err(e) => Ended::Failed(e, true),
        }
    }

    /// `online`, the state and the discovery messages: what every connection starts with.
    async fn announce(&mut self, client: &AsyncClient) -> Result<Acks> {
        let mut acks = Acks::default();
        let s = &self.settings;
        client
            .publish(s.topic("available"), QoS::AtLeastOnce, true, "online")
            .await?;
        acks.asked_other();
        if s.uplink.home_assistant {
            for (topic, config) in discovery(s) {
                client
                    .publish(topic, QoS::AtLeastOnce, true, config.to_string())
                    .await?;
                acks.asked_other();
            }
        }
        Ok(acks)
    }

    async fn run_connected(
        &mut self,
        client: AsyncClient,
        mut events: EventLoop,
        mut acks: Acks,
        stop: &mut Stop,
    ) -> Ended {
        let mut cursor = self.checkpoint.position;
        let mut state: Option<Value> = None;
        let mut poll = tokio::time::interval(POLL);
        let mut health_poll = tokio::time::interval(HEALTH_POLL);
        let stats_every = Duration::from_secs_f64(self.settings.uplink.stats_secs);
        let mut stats =
            tokio::time::interval_at(tokio::time::Instant::now() + stats_every, stats_every);
        loop {
            let step: Result<()> = tokio::select! {
                event = events.poll() => match event {
                    Ok(Event::Incoming(Incoming::PubAck(ack))) => {
                        self.acknowledged(&mut acks, ack.pkid);
                        if acks.scans_in_flight() <= WINDOW / 2 {
                            self.fill(&client, &mut cursor, &mut acks)
                        } else {
                            Ok(())
                        }
                    }
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        acks.sent(pkid);
                        Ok(())
                    }
                    Ok(Event::Outgoing(Outgoing::AwaitAck(pkid))) => {
                        acks.held_back(pkid);
                        Ok(())
                    }
                    Ok(_) => Ok(()),
                    Err(e) => Err(describe(e)),
                },
                _ = poll.tick() => self.fill(&client, &mut cursor, &mut acks),
                _ = health_poll.tick() => self.publish_state(&client, &mut state, &mut acks),
                _ = stats.tick() => self.publish_stats(&client, acks.scans_in_flight()),
                _ = stop.wait() => {
                    self.goodbye(&client, &mut events, &mut acks).await;
                    return Ended::Stopped;
                }
            };
            if let Err(e) = step {
                return Ended::Failed(e, true);
            }
            self.save_checkpoint_when_due(acks.scans_in_flight());
        }
    }

    /// Publishes new log lines while fewer than [`WINDOW`] scans await acknowledgement.
    fn fill(
        &mut self,
        client: &AsyncClient,
        cursor: &mut Option<Position>,
        acks: &mut Acks,
    ) -> Result<()> {
        let in_flight = acks.scans_in_flight();
        if in_flight >= WINDOW {
            return Ok(());
        }
        let lines = self.outbox.read(*cursor, WINDOW - in_flight)?;
        for line in lines {
            *cursor = Some(line.end);
            let Some((key, payload)) = self.scan_message(&line.text) else {
                continue;
            };
            client.try_publish(
                self.settings.topic("scans"),
                QoS::AtLeastOnce,
                false,
                payload,
            )?;
            acks.asked_scan(line.end, key);
        }
        Ok(())
    }

    /// A log line as published: `kiosk` and `key` first, then the record's fields. A line that
    /// is not a scan record is skipped (and logged).
    fn scan_message(&mut self, text: &str) -> Option<(String, String)> {
        let record = match ScanRecord::parse(text) {
            Ok(record) => record,
            Err(e) => {
                tracing::warn!(
                    "{}: skipped a line that is not a scan record ({e})",
                    self.settings.log.display()
                );
                return None;
            }
        };
        let key = format!("{}/{}/{}", self.settings.kiosk_id, record.boot, record.scan);
        self.window.note(&key, &record);
        #[derive(Serialize)]
        struct Message<'a> {
            kiosk: &'a str,
            key: &'a str,
            #[serde(flatten)]
            record: &'a ScanRecord,
        }
        let message = Message {
            kiosk: &self.settings.kiosk_id,
            key: &key,
            record: &record,
        };
        match serde_json::to_string(&message) {
            Ok(message) => Some((key, message)),
            Err(e) => {
                tracing::warn!("scan {key}: cannot encode its message ({e})");
                None
            }
        }
    }

    /// Publishes the kiosk's state when it changed (or on a new connection).
    fn publish_state(
        &mut self,
        client: &AsyncClient,
        published: &mut Option<Value>,
        acks: &mut Acks,
    ) -> Result<()> {
        let state = serde_json::to_value(kiosk_state(&self.settings))?;
        if published.as_ref() == Some(&state) {
            return Ok(());
        }
        client.try_publish(
            self.settings.topic("state"),
            QoS::AtLeastOnce,
            true,
            state.to_string(),
        )?;
        acks.asked_other();
        *published = Some(state);
        Ok(())
    }

    fn publish_stats(&mut self, client: &AsyncClient, in_flight: usize) -> Result<()> {
        let window = Duration::from_secs_f64(self.settings.uplink.stats_secs);
        let stats = self
            .window
            .summary(SystemTime::now(), window, self.published, in_flight);
        // QoS 0: a missed minute is replaced by the next.
        client.try_publish(
            self.settings.topic("stats"),
            QoS::AtMostOnce,
            false,
            stats.to_string(),
        )?;
        Ok(())
    }

    /// On stop: `offline` (retained), the acknowledgements still coming, a clean disconnect.
    async fn goodbye(&mut self, client: &AsyncClient, events: &mut EventLoop, acks: &mut Acks) {
        let s = &self.settings;
        if client
            .try_publish(s.topic("available"), QoS::AtLeastOnce, true, "offline")
            .is_ok()
        {
            acks.asked_other();
        }
        let drain = async {
            while !acks.is_empty() {
                match events.poll().await {
                    Ok(Event::Incoming(Incoming::PubAck(ack))) => self.acknowledged(acks, ack.pkid),
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => acks.sent(pkid),
                    Ok(Event::Outgoing(Outgoing::AwaitAck(pkid))) => acks.held_back(pkid),
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
            let _ = client.disconnect().await;
            while let Ok(event) = events.poll().await {
                if matches!(event, Event::Outgoing(Outgoing::Disconnect)) {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(3), drain).await;
    }
}

/// Waits for the broker's CONNACK.
async fn connect(events: &mut EventLoop) -> Result<()> {
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                return match ack.code {
                    ConnectReturnCode::Success => Ok(()),
                    code => Err(refused(code)),
                }
            }
            Ok(_) => {}
            Err(e) => return Err(describe(e)),
        }
    }
}

fn refused(code: ConnectReturnCode) -> anyhow::Error {
    match code {
        ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized => {
            anyhow!("the broker refused the credentials ({code:?}): check uplink.credentials")
        }
        code => anyhow!("the broker refused the connection ({code:?})"),
    }
}

/// One line for a connection error.
fn describe(e: ConnectionError) -> anyhow::Error {
    match e {
        ConnectionError::ConnectionRefused(code) => refused(code),
        ConnectionError::Tls(e) => anyhow!("TLS: {e}"),
        ConnectionError::Io(e) => anyhow!("{e}"),
        e => anyhow!("{e}"),
    }
}

/// The state published: what runs and whether its devices work, from the kiosk's health file.
#[derive(Serialize)]
struct KioskState {
    kiosk: String,
    uplink_version: &'static str,
    /// The kiosk service: `running`, `stopped`, `failed: …`, or `unknown` without its health
    /// file.
    status: String,
    version: Option<String>,
    model: Option<health::ModelHealth>,
    catalogue: Option<health::CatalogueHealth>,
    calibrated: Option<String>,
    camera: Option<Part>,
    display: Option<Part>,
}

fn kiosk_state(settings: &Settings) -> KioskState {
    let health = match &settings.health_folder {
        Some(folder) => health::read(folder).map_err(|e| format!("unknown: {e:#}")),
        None => Err("unknown: no [metrics] folder configured".into()),
    };
    let mut state = KioskState {
        kiosk: settings.kiosk_id.clone(),
        uplink_version: env!("CARGO_PKG_VERSION"),
        status: String::new(),
        version: None,
        model: None,
        catalogue: None,
        calibrated: None,
        camera: None,
        display: None,
    };
    match health {
        Ok(health) => {
            state.status = health.status;
            state.version = Some(health.version);
            state.model = health.model;
            state.catalogue = health.catalogue;
            state.calibrated = health.calibrated;
            state.camera = Some(health.camera);
            state.display = Some(health.display);
        }
        Err(status) => state.status = status,
    }
    state
}

/// Home Assistant MQTT discovery: the last scan's best item, scans per window, the camera and
/// the display, each tied to the kiosk's availability.
fn discovery(s: &Settings) -> Vec<(String, Value)> {
    let node: String = format!("fashion_kiosk_{}", s.kiosk_id)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let device = json!({
        "identifiers": [node],
        "name": format!("Fashion kiosk {}", s.kiosk_id),
        "model": "fashion-kiosk",
        "sw_version": env!("CARGO_PKG_VERSION"),
    });
    let entity = |component: &str, object: &str, name: &str, topic: String, template: &str| {
        let mut config = json!({
            "name": name,
            "unique_id": format!("{node}_{object}"),
            "state_topic": topic,
            "value_template": template,
            "availability_topic": s.topic("available"),
            "device": device,
        });
        if component == "binary_sensor" {
            config["device_class"] = json!("connectivity");
        }
        (
            format!(
                "{}/{component}/{node}/{object}/config",
                s.uplink.discovery_prefix
            ),
            config,
        )
    };
    vec![
        entity(
            "sensor",
            "last_scan",
            "Last scan",
            s.topic("scans"),
            "{{ value_json.results[0].id if value_json.results else value_json.outcome }}",
        ),
        entity(
            "sensor",
            "scans",
            "Scans per window",
            s.topic("stats"),
            "{{ value_json.scans }}",
        ),
        entity(
            "binary_sensor",
            "camera",
            "Camera",
            s.topic("state"),
            "{{ 'ON' if value_json.camera and value_json.camera.up else 'OFF' }}",
        ),
        entity(
            "binary_sensor",
            "display",
            "Display",
            s.topic("state"),
            "{{ 'ON' if value_json.display and value_json.display.up else 'OFF' }}",
        ),
    ]
}

/// The scans seen in the last stats window (by their log time), for `stats`.
#[derive(Default)]
struct StatsWindow {
    scans: VecDeque<SeenScan>,
    /// The keys of `scans`, to count a scan once however often it is resent.
    keys: HashSet<String>,
}

struct SeenScan {
    time: SystemTime,
    key: String,
    outcome: Outcome,
    /// Press to log line; none for a line without latencies (never 0 for a real scan).
    total_ms: Option<f64>,
}

impl StatsWindow {
    /// Notes a scan record (once per key: a resend after reconnecting is not counted again).
    fn note(&mut self, key: &str, record: &ScanRecord) {
        let Ok(time) = humantime::parse_rfc3339_weak(&record.time) else {
            return;
        };
        if !self.keys.insert(key.to_string()) {
            return;
        }
        self.scans.push_back(SeenScan {
            time,
            key: key.to_string(),
            outcome: record.outcome,
            total_ms: Some(record.latency_ms.total).filter(|&total| total > 0.0),
        });
    }

    /// The window ending `now`: scans by outcome, total latency percentiles, and the uplink's
    /// own counts.
    fn summary(
        &mut self,
        now: SystemTime,
        window: Duration,
        published: u64,
        in_flight: usize,
    ) -> Value {
        let start = now.checked_sub(window).unwrap_or(SystemTime::UNIX_EPOCH);
        let keys = &mut self.keys;
        self.scans.retain(|seen| {
            let keep = seen.time >= start;
            if !keep {
                keys.remove(&seen.key);
            }
            keep
        });
        let in_window: Vec<&SeenScan> = self.scans.iter().filter(|s| s.time <= now).collect();
        let count = |outcome: Outcome| in_window.iter().filter(|s| s.outcome == outcome).count();
        let mut latencies: Vec<f64> = in_window.iter().filter_map(|s| s.total_ms).collect();
        latencies.sort_by(f64::total_cmp);
        let percentile = |p: f64| -> Option<f64> {
            (!latencies.is_empty()).then(|| {
                let rank = ((p / 100.0) * latencies.len() as f64).ceil() as usize;
                latencies[rank.clamp(1, latencies.len()) - 1]
            })
        };
        json!({
            "time": humantime::format_rfc3339_seconds(now).to_string(),
            "window_s": window.as_secs_f64(),
            "scans": in_window.len(),
            "ok": count(Outcome::Ok),
            "nothing": count(Outcome::Nothing),
            "errors": count(Outcome::Error),
            "latency_ms": {
                "p50": percentile(50.0),
                "p90": percentile(90.0),
                "p99": percentile(99.0),
                "max": latencies.last(),
            },
            "uplink": { "published": published, "awaiting_ack": in_flight },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(time: &str, scan: u64, outcome: &str, total: f64) -> ScanRecord {
        let line = json!({"time": time, "boot": "b", "scan": scan, "outcome": outcome,
               "region": "none", "latency_ms": {"total": total}});
        ScanRecord::parse(&line.to_string()).unwrap()
    }

    #[test]
    fn stats_count_each_scan_of_the_window_once_with_nearest_rank_percentiles() {
        let mut window = StatsWindow::default();
        let base = "2026-12-01T10:00:";
        for scan in 1..=100u64 {
            let time = format!("{base}{:02}Z", scan % 60);
            let outcome = if scan % 10 == 0 { "error" } else { "ok" };
            let r = record(&time, scan, outcome, scan as f64);
            window.note(&format!("k/b/{scan}"), &r);
            // A resend of the same scan is not counted again.
            window.note(&format!("k/b/{scan}"), &r);
        }
        // One long before the window.
        window.note("k/b/0", &record("2026-12-01T09:00:00Z", 0, "ok", 5000.0));
        let now = humantime::parse_rfc3339("2026-12-01T10:01:00Z").unwrap();
        let stats = window.summary(now, Duration::from_secs(60), 7, 2);
        assert_eq!(stats["scans"], 100);
        assert_eq!(stats["errors"], 10);
        assert_eq!(stats["ok"], 90);
        assert_eq!(stats["latency_ms"]["p50"], 50.0);
        assert_eq!(stats["latency_ms"]["p99"], 99.0);
        assert_eq!(stats["latency_ms"]["max"], 100.0);
        assert_eq!(stats["uplink"]["awaiting_ack"], 2);
    }
}
