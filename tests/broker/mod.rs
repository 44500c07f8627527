//! A real MQTT broker for the uplink's tests and benchmark: Debian's `mosquitto` on a free port of
//! 127.0.0.1, a subscriber that records what arrives, and a work folder whose scan log is written
//! the kiosk's way, with a config for `fashion-kiosk uplink`.
// Each user (a test, the benchmark) takes what it needs.
#![allow(dead_code)]

use std::collections::HashSet;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiosk_service::scanlog::ScanLog;
use rumqttc::{Client, Event, Incoming, MqttOptions, QoS};

use crate::common::{fashion_kiosk_args, repo};

/// Generous: the aarch64 test run starts the uplink under qemu.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A program of Debian's mosquitto package, found where the package puts it (looked up by path:
/// under qemu-user a spawn of a missing program is not always reported as not found).
fn mosquitto_program(name: &str) -> PathBuf {
    ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!("these tests need Debian's mosquitto ({name}): apt install mosquitto")
        })
}

/// A mosquitto on 127.0.0.1:`port`, stopped on drop. It queues without limit for a subscriber
/// that falls behind (the default drops past 1,000), so that what arrives is all the uplink sent.
pub struct Broker {
    pub child: Child,
    pub port: u16,
}

#[derive(Clone, Default)]
pub struct BrokerOptions {
    /// `user:password` accepted (anonymous refused), else anonymous.
    pub password: Option<(String, String)>,
    /// Serve TLS with the test server certificate.
    pub tls: bool,
}

impl Broker {
    pub fn start(dir: &Path, port: u16, options: &BrokerOptions) -> Broker {
        let conf = dir.join(format!("mosquitto-{port}.conf"));
        let mut text = format!(
            "user root\npersistence false\nlog_dest stderr\nmax_queued_messages 0\n\
             listener {port} 127.0.0.1\n"
        );
        match &options.password {
            Some((user, password)) => {
                let file = dir.join("passwords");
                std::fs::write(&file, format!("{user}:{password}\n")).unwrap();
                let status = Command::new(mosquitto_program("mosquitto_passwd"))
                    .arg("-U")
                    .arg(&file)
                    .status()
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
        let child = Command::new(mosquitto_program("mosquitto"))
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not start on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Broker { child, port }
    }

    pub fn stop(mut self) {
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
pub struct Message {
    pub topic: String,
    pub payload: String,
    pub retain: bool,
    /// When it arrived.
    pub arrived: std::time::SystemTime,
}

/// A client subscribed to everything under `test/`, reconnecting as the broker comes and goes.
pub struct Subscriber {
    pub messages: Arc<Mutex<Vec<Message>>>,
}

impl Subscriber {
    pub fn start(port: u16) -> Subscriber {
        Self::named(port, "test-subscriber")
    }

    pub fn named(port: u16, name: &str) -> Subscriber {
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
                            arrived: std::time::SystemTime::now(),
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

    pub fn on(&self, topic: &str) -> Vec<Message> {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.topic == topic)
            .cloned()
            .collect()
    }

    /// When each message on `topic` arrived, in order.
    pub fn arrivals(&self, topic: &str) -> Vec<std::time::SystemTime> {
        self.on(topic).iter().map(|m| m.arrived).collect()
    }

    /// The scans' keys in the order they first arrived.
    pub fn scan_keys(&self) -> Vec<String> {
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

    pub fn wait_for(&self, what: &str, done: impl Fn(&Subscriber) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !done(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn wait_for_scans(&self, expected: &[String]) {
        self.wait_for(&format!("{} scans", expected.len()), |s| {
            s.scan_keys().len() >= expected.len()
        });
        assert_eq!(self.scan_keys(), expected, "scans missing or out of order");
    }
}

/// A work folder with a config for the uplink, and a scan log written the kiosk's way.
pub struct Kiosk {
    pub dir: tempfile::TempDir,
    pub log: ScanLog,
    pub written: Vec<String>,
    pub boot: String,
}

impl Kiosk {
    pub fn new(port: u16, extra: &str, max_bytes: u64, keep: u32) -> Kiosk {
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
    pub fn scan(&mut self, n: usize) {
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

    pub fn start_uplink(&self) -> Uplink {
        let stderr = self.dir.path().join(format!(
            "uplink-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let child = fashion_kiosk_args(&["uplink", "--config"])
            .arg(self.dir.path().join("kiosk.toml"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Uplink { child, stderr }
    }
}

pub struct Uplink {
    pub child: Child,
    pub stderr: PathBuf,
}

impl Uplink {
    pub fn journal(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn wait_for_journal(&self, what: &str) {
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

    pub fn kill(&mut self, signal: &str) {
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
