//! The uplink against a real MQTT broker (Debian's `mosquitto`, started by each test on a free
//! port of 127.0.0.1): every scan arrives, in order, across broker outages, the uplink's own
//! crashes and log rotation; the last will; clear errors for bad credentials, an unreachable
//! broker and TLS; and the kiosk's metrics file read by a Prometheus text-format parser.

mod broker;
mod common;

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use broker::{free_port, Broker, BrokerOptions, Kiosk, Subscriber};
use common::{fashion_kiosk, fashion_kiosk_args, repo};

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
    assert!(
        state["status"].as_str().unwrap().starts_with("unknown"),
        "{state}"
    );
    subscriber.wait_for("stats", |s| !s.on("test/k1/stats").is_empty());

    // A clean stop says offline (retained), and the checkpoint holds the last scan.
    uplink.kill("TERM");
    subscriber.wait_for("offline", |s| {
        s.on("test/k1/available").last().map(|m| m.payload.as_str()) == Some("offline")
    });
    let checkpoint =
        std::fs::read_to_string(kiosk.dir.path().join("state/checkpoint.json")).unwrap();
    assert!(
        checkpoint.contains(kiosk.written.last().unwrap()),
        "{checkpoint}"
    );
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
    assert!(
        subscriber.scan_keys().len() < kiosk.written.len(),
        "the backlog was not cut"
    );
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
fn home_assistant_discovery_is_published_retained_when_asked() {
    let port = free_port();
    let kiosk = Kiosk::new(
        port,
        "home_assistant = true\ndiscovery_prefix = \"test/ha\"",
        1 << 20,
        3,
    );
    let broker = Broker::start(kiosk.dir.path(), port, &BrokerOptions::default());
    let watcher = Subscriber::start(port);
    let mut uplink = kiosk.start_uplink();
    // Wait until the broker holds all four (a subscriber already there sees them live, without
    // the retain flag), so the check below does not race the uplink's publishing.
    watcher.wait_for("4 discovery messages published", |s| {
        s.messages
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.topic.starts_with("test/ha/"))
            .count()
            >= 4
    });
    // A Home Assistant that starts later finds the kiosk's entities, retained.
    let home_assistant = Subscriber::named(port, "home-assistant");
    home_assistant.wait_for("4 discovery messages", |s| {
        s.messages
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.topic.starts_with("test/ha/") && m.retain)
            .count()
            >= 4
    });
    let camera = home_assistant.on("test/ha/binary_sensor/fashion_kiosk_k1/camera/config");
    let config: serde_json::Value = serde_json::from_str(&camera[0].payload).unwrap();
    assert_eq!(config["state_topic"], "test/k1/state");
    assert_eq!(config["availability_topic"], "test/k1/available");
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
    assert!(
        journal.contains("UnknownIssuer") || journal.contains("certificate"),
        "{journal}"
    );
    drop(uplink);
    broker.stop();
}

#[test]
fn the_kiosks_metrics_parse_as_prometheus_text_and_its_health_reaches_the_state_topic() {
    // The real kiosk, on the tiny stand-in model, scanning the demo photos.
    let port = free_port();
    let kiosk = Kiosk::new(port, "", 1 << 20, 3);
    let work = kiosk.dir.path();
    let status = fashion_kiosk_args(&["index", "--catalogue"])
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
        std::fs::copy(
            repo("demo/catalogue").join(&name),
            work.join("photos").join(&name),
        )
        .unwrap();
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
    // Ready (its health file says so), then one press per scan, each once the last is logged
    // (under qemu a scan takes long enough for presses to coalesce).
    let wait_until = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + broker::PATIENCE;
        while !done() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let health = work.join("metrics/fashion-kiosk.json");
    wait_until("the kiosk to be ready", &|| {
        std::fs::read_to_string(&health).is_ok_and(|h| h.contains("\"running\""))
    });
    let logged = || {
        std::fs::read_to_string(work.join("logs/scans.jsonl")).map_or(0, |log| log.lines().count())
    };
    {
        let stdin = run.stdin.as_mut().unwrap();
        for n in 1..=3 {
            std::thread::sleep(Duration::from_millis(100));
            stdin.write_all(b"\n").unwrap();
            stdin.flush().unwrap();
            wait_until("a scan", &|| logged() >= n);
        }
    }
    subscriber.wait_for("3 scans from the kiosk", |s| {
        s.on("test/k1/scans").len() >= 3
    });
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
    assert_eq!(
        value("fashion_kiosk_running", None),
        0.0,
        "stopped at end of input"
    );
    assert!(scrape
        .samples
        .iter()
        .any(|s| s.metric == "fashion_kiosk_scan_stage_seconds"
            && s.labels.get("stage") == Some("embed")));

    // The state topic carries the kiosk's health: its catalogue, and that it stopped.
    subscriber.wait_for("the kiosk's state", |s| {
        s.on("test/k1/state")
            .last()
            .is_some_and(|m| m.payload.contains("\"stopped\""))
    });
    let state: serde_json::Value =
        serde_json::from_str(&subscriber.on("test/k1/state").last().unwrap().payload).unwrap();
    assert!(
        state["catalogue"]["items"].as_u64().unwrap() > 100,
        "{state}"
    );
    assert_eq!(state["model"]["name"], "tiny-test-embedder", "{state}");
    // Retained: a monitor that subscribes later gets it at once, and the availability too.
    let latecomer = Subscriber::named(port, "latecomer");
    latecomer.wait_for("the retained state", |s| {
        s.on("test/k1/state").iter().any(|m| m.retain) && !s.on("test/k1/available").is_empty()
    });
    broker.stop();
}
