//! The uplink against a real MQTT broker (Debian's `mosquitto`, started by each test on a free
//! port of 127.0.0.1): every scan arrives, in order, across broker outages, the uplink's own
//! crashes and log rotation; the last will; clear errors for bad credentials, an unreachable
//! broker and TLS; and the kiosk's metrics file read by a Prometheus text-format parser.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{fashion_kiosk, repo};
use fashion_kiosk::scanlog::ScanLog;
use rumqttc::{Client, Event, Incoming, MqttOptions, QoS};

/// Generous: the aarch64 test run starts the uplink under qemu.
const PATIENCE: Duration = Duration::from_secs(60);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn mosquitto_binary() -> PathBuf {
    ["/usr/sbin/mosquitto", "/usr/bin/mosquitto", "/usr/local/sbin/mosquitto"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("these tests need Debian's mosquitto: apt install mosquitto")
}

/// A mosquitto on 127.0.0.1:`port`, stopped on drop.
struct Broker {
    child: Child,
    port: u16,
}

#[derive(Clone, Default)]
struct BrokerOptions {
    /// `user:password` accepted (anonymous refused), else anonymous.
    password: Option<(String, String)>,
    /// Serve TLS with the test server certificate.
    tls: bool,
}

impl Broker {
    fn start(dir: &Path, port: u16, options: &BrokerOptions) -> Broker {
        let conf = dir.join(format!("mosquitto-{port}.conf"));
        let mut text = format!(
            "user root\npersistence false\nlog_dest stderr\nlistener {port} 127.0.0.1\n"
        );
        match &options.password {
            Some((user, password)) => {
                let file = dir.join("passwords");
                std::fs::write(&file, format!("{user}:{password}\n")).unwrap();
                let status = Command::new(mosquitto_binary().with_file_name("mosquitto_passwd"))
                    .arg("-U")
                    .arg(&file)
                    .status()
                    .or_else(|_| Command::new("mosquitto_passwd").arg("-U").arg(&file).status())
                    .unwrap();
                assert!(status.success());
                text += &format!("allow_anonymous false\npassword_file {}\n", file.display());
            }
            None => text += "allow_anonymous true\n",
        }
        if options.tls {
            let tls = repo("tests/fixtures/tls");
            text += &format!(
                "cafile {}\ncertfile {}\nkeyfile {}\n",
                tls.join("ca.pem").display(),
                tls.join("server.pem").display(),
                tls.join("server.key").display()
            );
        }
        std::fs::write(&conf, text).unwrap();
        let child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not start on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Broker { child, port }
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A message the subscriber got.
#[derive(Debug, Clone)]
struct Message {
    topic: String,
    payload: String,
    retain: bool,
}

/// A client subscribed to everything under `test/`, reconnecting as the broker comes and goes.
struct Subscriber {
    messages: Arc<Mutex<Vec<Message>>>,
}

impl Subscriber {
    fn start(port: u16) -> Subscriber {
        Self::named(port, "test-subscriber")
    }

    fn named(port: u16, name: &str) -> Subscriber {
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = messages.clone();
        let mut options = MqttOptions::new(format!("{name}-{port}"), "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(5));
        let (client, mut connection) = Client::new(options, 100);
        let (subscribed_tx, subscribed) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                        // A new session each time: subscribe again.
                        let _ = client.subscribe("test/#", QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Incoming::SubAck(_))) => {
                        let _ = subscribed_tx.send(());
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        sink.lock().unwrap().push(Message {
                            topic: p.topic.clone(),
                            payload: String::from_utf8_lossy(&p.payload).into_owned(),
                            retain: p.retain,
                        });
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        subscribed
            .recv_timeout(Duration::from_secs(10))
            .expect("the test subscriber could not subscribe");
        Subscriber { messages }
    }

    fn on(&self, topic: &str) -> Vec<Message> {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.topic == topic)
            .cloned()
            .collect()
    }

    /// The scans' keys in the order they first arrived.
    fn scan_keys(&self) -> Vec<String> {
        let mut seen = HashSet::new();
        self.on("test/k1/scans")
            .iter()
            .map(|m| {
                let value: serde_json::Value = serde_json::from_str(&m.payload).unwrap();
                value["key"].as_str().unwrap().to_string()
            })
            .filter(|key| seen.insert(key.clone()))
            .collect()
    }

    fn wait_for(&self, what: &str, done: impl Fn(&Subscriber) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !done(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_for_scans(&self, expected: &[String]) {
        self.wait_for(&format!("{} scans", expected.len()), |s| {
            s.scan_keys().len() >= expected.len()
        });
        assert_eq!(self.scan_keys(), expected, "scans missing or out of order");
    }
}

/// A work folder with a config for the uplink, and a scan log written the kiosk's way.
struct Kiosk {
    dir: tempfile::TempDir,
    log: ScanLog,
    written: Vec<String>,
    boot: String,
}

impl Kiosk {
    fn new(port: u16, extra: &str, max_bytes: u64, keep: u32) -> Kiosk {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            r#"
[catalogue]
table = "catalogue.fkt"
[camera]
kind = "folder"
path = "photos"
[trigger]
kind = "stdin"
[display]
kind = "simulated"
screens = "screens"
[scan_log]
path = "logs/scans.jsonl"
max_bytes = {max_bytes}
keep = {keep}
[metrics]
folder = "metrics"
[uplink]
broker = "127.0.0.1"
port = {port}
kiosk_id = "k1"
prefix = "test"
checkpoint = "state/checkpoint.json"
stats_secs = 1
keep_alive_secs = 5
retry_max_secs = 2
{extra}
"#
        );
        std::fs::write(dir.path().join("kiosk.toml"), config).unwrap();
        std::fs::create_dir_all(dir.path().join("metrics")).unwrap();
        let log = ScanLog::open(&dir.path().join("logs/scans.jsonl"), max_bytes, keep).unwrap();
        Kiosk {
            dir,
            log,
            written: Vec::new(),
            boot: format!("boot{}", std::process::id()),
        }
    }

    /// Logs `n` scans; returns nothing: their keys are in `written`.
    fn scan(&mut self, n: usize) {
        for _ in 0..n {
            let scan = self.written.len() + 1;
            let record = serde_json::json!({
                "time": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
                "boot": self.boot,
                "scan": scan,
                "outcome": "ok",
                "region": "reference",
                "results": [{"id": format!("item{scan}"), "score": 0.9}],
                "coalesced": 0,
                "latency_ms": {"total": 500.0 + scan as f64},
            });
            self.log.append(&record).unwrap();
            self.written.push(format!("k1/{}/{scan}", self.boot));
        }
    }

    fn start_uplink(&self) -> Uplink {
        let stderr = self.dir.path().join(format!(
            "uplink-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let child = fashion_kiosk()
            .arg("uplink")
            .arg("--config")
            .arg(self.dir.path().join("kiosk.toml"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Uplink { child, stderr }
    }
}

struct Uplink {
    child: Child,
    stderr: PathBuf,
}

impl Uplink {
    fn journal(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn wait_for_journal(&self, what: &str) {
        let deadline = Instant::now() + PATIENCE;
        while !self.journal().contains(what) {
            assert!(
                Instant::now() < deadline,
                "the uplink never said {what:?}; it said:\n{}",
                self.journal()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self, signal: &str) {
        Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        let _ = self.child.wait();
    }
}

impl Drop for Uplink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn every_scan_arrives_in_order_with_availability_state_and_stats() {
    let port = free_port();
    let mut kiosk = Kiosk::new(port, "", 1 << 20, 3);
    let broker = Broker::start(kiosk.dir.path(), port, &BrokerOptions::default());
    let subscriber = Subscriber::start(port);
    kiosk.scan(40);
    let mut uplink = kiosk.start_uplink();
    subscriber.wait_for_scans(&kiosk.written);
    // New scans while it runs arrive too.
    kiosk.scan(25);
    subscriber.wait_for_scans(&kiosk.written);

    let first: serde_json::Value =
        serde_json::from_str(&subscriber.on("test/k1/scans")[0].payload).unwrap();
    assert_eq!(first["kiosk"], "k1");
    assert_eq!(first["results"][0]["id"], "item1");
    assert!(subscriber.on("test/k1/scans").iter().all(|m| !m.retain));
    let available = subscriber.on("test/k1/available");
    assert_eq!(available.last().unwrap().payload, "online");
    // No health file yet: the state says so.
    subscriber.wait_for("state", |s| !s.on("test/k1/state").is_empty());
    let state: serde_json::Value =
        serde_json::from_str(&subscriber.on("test/k1/state")[0].payload).unwrap();
    assert!(state["status"].as_str().unwrap().starts_with("unknown"), "{state}");
    subscriber.wait_for("stats", |s| !s.on("test/k1/stats").is_empty());

    // A clean stop says offline (retained), and the checkpoint holds the last scan.
    uplink.kill("TERM");
    subscriber.wait_for("offline", |s| {
        s.on("test/k1/available").last().map(|m| m.payload.as_str()) == Some("offline")
    });
    let checkpoint = std::fs::read_to_string(kiosk.dir.path().join("state/checkpoint.json")).unwrap();
    assert!(checkpoint.contains(kiosk.written.last().unwrap()), "{checkpoint}");
    broker.stop();
}

#[test]
fn a_broker_outage_and_an_uplink_killed_mid_backlog_lose_nothing() {
    let port = free_port();
    let mut kiosk = Kiosk::new(port, "", 1 << 20, 3);
    let broker = Broker::start(kiosk.dir.path(), port, &BrokerOptions::default());
    let subscriber = Subscriber::start(port);
    kiosk.scan(30);
    let mut uplink = kiosk.start_uplink();
    subscriber.wait_for_scans(&kiosk.written);

    // The broker dies; scans go on; it comes back on the same port: the backlog arrives.
    broker.stop();
    kiosk.scan(30);
    uplink.wait_for_journal("retrying in");
    let broker = Broker::start(kiosk.dir.path(), port, &BrokerOptions::default());
    subscriber.wait_for_scans(&kiosk.written);

    // A long backlog, and the uplink killed with SIGKILL part-way: a new one finishes it.
    uplink.kill("KILL");
    kiosk.scan(3000);
    let mut uplink = kiosk.start_uplink();
    subscriber.wait_for("part of the backlog", |s| s.scan_keys().len() > 60 + 300);
    uplink.kill("KILL");
    assert!(subscriber.scan_keys().len() < kiosk.written.len(), "the backlog was not cut");
    let _uplink = kiosk.start_uplink();
    subscriber.wait_for_scans(&kiosk.written);
    broker.stop();
}

#[test]
fn a_log_rotated_while_the_uplink_is_behind_loses_nothing() {
    let port = free_port();
    // ~20 lines per file, 40 files kept: 200 scans rotate ~10 times.
    let mut kiosk = Kiosk::new(port, "", 4096, 40);
    let mut uplink = kiosk.start_uplink();
    uplink.wait_for_journal("retrying in");
    kiosk.scan(200);
    assert!(kiosk.dir.path().join("logs/scans.jsonl.8").exists());
    let broker = Broker::start(kiosk.dir.path(), port, &BrokerOptions::default());
    let subscriber = Subscriber::start(port);
    subscriber.wait_for_scans(&kiosk.written);
    // And rotation while connected.
    kiosk.scan(100);
    subscriber.wait_for_scans(&kiosk.written);
    uplink.kill("TERM");
    broker.stop();
}

#[test]
fn the_last_will_says_offline_when_the_uplink_dies() {
    let port = free_port();
    let kiosk = Kiosk::new(port, "", 1 << 20, 3);
    let broker = Broker::start(kiosk.dir.path(), port, &BrokerOptions::default());
    let subscriber = Subscriber::start(port);
    let mut uplink = kiosk.start_uplink();
    subscriber.wait_for("online", |s| {
        s.on("test/k1/available").last().map(|m| m.payload.as_str()) == Some("online")
    });
    uplink.kill("KILL");
    // The broker notices after 1.5 keep-alives (5 s) and publishes the will.
    subscriber.wait_for("the last will", |s| {
        s.on("test/k1/available").last().map(|m| m.payload.as_str()) == Some("offline")
    });
    broker.stop();
}

#[test]
fn bad_credentials_an_unreachable_broker_and_tls_errors_are_one_clear_line_and_retried() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(
        dir.path(),
        port,
        &BrokerOptions {
            password: Some(("kiosk".into(), "right".into())),
            tls: false,
        },
    );
    let credentials = dir.path().join("credentials.toml");
    std::fs::write(&credentials, "username = \"kiosk\"\npassword = \"wrong\"\n").unwrap();
    let kiosk = Kiosk::new(
        port,
        &format!("credentials = \"{}\"", credentials.display()),
        1 << 20,
        3,
    );
    let uplink = kiosk.start_uplink();
    uplink.wait_for_journal("refused the credentials");
    uplink.wait_for_journal("retrying in 2 s");
    drop(uplink);
    // The right password connects.
    std::fs::write(&credentials, "username = \"kiosk\"\npassword = \"right\"\n").unwrap();
    let uplink = kiosk.start_uplink();
    uplink.wait_for_journal("connected to");
    drop(uplink);
    broker.stop();

    // Nobody listening.
    let closed = free_port();
    let kiosk = Kiosk::new(closed, "", 1 << 20, 3);
    let uplink = kiosk.start_uplink();
    uplink.wait_for_journal(&format!("broker 127.0.0.1:{closed}: Connection refused"));
    uplink.wait_for_journal("retrying in 2 s");
    drop(uplink);

    // TLS: the right CA connects; another CA is refused with the reason.
    let tls_port = free_port();
    let tls_dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(
        tls_dir.path(),
        tls_port,
        &BrokerOptions {
            password: None,
            tls: true,
        },
    );
    let ca = repo("tests/fixtures/tls/ca.pem");
    let kiosk = Kiosk::new(
        tls_port,
        &format!("tls = true\nca_file = \"{}\"", ca.display()),
        1 << 20,
        3,
    );
    let uplink = kiosk.start_uplink();
    uplink.wait_for_journal("connected to");
    drop(uplink);
    let other = repo("tests/fixtures/tls/other-ca.pem");
    let kiosk = Kiosk::new(
        tls_port,
        &format!("tls = true\nca_file = \"{}\"", other.display()),
        1 << 20,
        3,
    );
    let uplink = kiosk.start_uplink();
    uplink.wait_for_journal("TLS:");
    uplink.wait_for_journal("retrying in");
    let journal = uplink.journal();
    assert!(journal.contains("UnknownIssuer") || journal.contains("certificate"), "{journal}");
    drop(uplink);
    broker.stop();
}

#[test]
fn the_kiosks_metrics_parse_as_prometheus_text_and_its_health_reaches_the_state_topic() {
    // The real kiosk, on the tiny stand-in model, scanning the demo photos.
    let port = free_port();
    let kiosk = Kiosk::new(port, "", 1 << 20, 3);
    let work = kiosk.dir.path();
    let status = fashion_kiosk()
        .args(["index", "--catalogue"])
        .arg(repo("demo/catalogue"))
        .arg("--out")
        .arg(work.join("catalogue.fkt"))
        .arg("--model")
        .arg(repo("tests/fixtures/tiny-model/tiny.manifest.json"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::create_dir_all(work.join("photos")).unwrap();
    for name in common::demo_sample(3) {
        std::fs::copy(repo("demo/catalogue").join(&name), work.join("photos").join(&name)).unwrap();
    }
    let mut run = fashion_kiosk()
        .args(["run", "--config"])
        .arg(work.join("kiosk.toml"))
        .arg("--model")
        .arg(repo("tests/fixtures/tiny-model/tiny.manifest.json"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let broker = Broker::start(work, port, &BrokerOptions::default());
    let subscriber = Subscriber::start(port);
    let _uplink = kiosk.start_uplink();
    {
        let stdin = run.stdin.as_mut().unwrap();
        for _ in 0..3 {
            stdin.write_all(b"\n").unwrap();
            stdin.flush().unwrap();
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    subscriber.wait_for("3 scans from the kiosk", |s| s.on("test/k1/scans").len() >= 3);
    drop(run.stdin.take());
    assert!(run.wait().unwrap().success());

    let text = std::fs::read_to_string(work.join("metrics/fashion-kiosk.prom")).unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let value = |name: &str, label: Option<(&str, &str)>| -> f64 {
        let sample = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .unwrap_or_else(|| panic!("no {name} {label:?} in:\n{text}"));
        match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("{name} is not a number"),
        }
    };
    let ok = value("fashion_kiosk_scans_total", Some(("outcome", "ok")));
    let nothing = value("fashion_kiosk_scans_total", Some(("outcome", "nothing")));
    assert_eq!(ok + nothing, 3.0, "{text}");
    assert_eq!(value("fashion_kiosk_camera_up", None), 1.0);
    assert!(value("fashion_kiosk_catalogue_items", None) > 100.0);
    assert_eq!(value("fashion_kiosk_running", None), 0.0, "stopped at end of input");
    assert!(scrape
        .samples
        .iter()
        .any(|s| s.metric == "fashion_kiosk_scan_stage_seconds" && s.labels.get("stage") == Some("embed")));

    // The state topic carries the kiosk's health: its catalogue, and that it stopped.
    subscriber.wait_for("the kiosk's state", |s| {
        s.on("test/k1/state").last().is_some_and(|m| m.payload.contains("\"stopped\""))
    });
    let state: serde_json::Value =
        serde_json::from_str(&subscriber.on("test/k1/state").last().unwrap().payload).unwrap();
    assert!(state["catalogue"]["items"].as_u64().unwrap() > 100, "{state}");
    assert_eq!(state["model"]["name"], "tiny-test-embedder", "{state}");
    // Retained: a monitor that subscribes later gets it at once, and the availability too.
    let latecomer = Subscriber::named(port, "latecomer");
    latecomer.wait_for("the retained state", |s| {
        s.on("test/k1/state").iter().any(|m| m.retain) && !s.on("test/k1/available").is_empty()
    });
    broker.stop();
}
