//! End-to-end tests of `fashion-kiosk run` with simulated devices: a folder camera, presses as
//! datagrams on a Unix socket (or lines on stdin), PNG screens, the scan log, systemd's notify
//! socket, and signals. Screens are checked by their pixels against the shared renderer.

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiosk_service::device::display::{CalibrationStep, Canvas, Screen};

mod common;

use common::repo;

/// Polls `ready` every 50 ms for up to two minutes (model loading and scans on a slow CI core).
fn wait_for(what: &str, kiosk: &Kiosk, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        if start.elapsed() > Duration::from_secs(120) {
            panic!("timed out waiting for {what}; stderr:\n{}", kiosk.stderr());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A scene: a 6-item catalogue table, a camera folder of re-encoded, resized copies of three of
/// its items (so the right top-1 id is known), and a config for a simulated kiosk.
struct Scene {
    dir: tempfile::TempDir,
    camera_ids: Vec<String>,
}

impl Scene {
    fn new() -> Scene {
        let dir = tempfile::tempdir().unwrap();
        let catalogue = dir.path().join("catalogue");
        std::fs::create_dir(&catalogue).unwrap();
        let picked = common::demo_sample(6);
        for name in &picked {
            std::fs::copy(repo("demo/catalogue").join(name), catalogue.join(name)).unwrap();
        }
        let out = common::fashion_kiosk_args(&["index", "--catalogue"])
            .arg(&catalogue)
            .arg("--labels")
            .arg(repo("demo/labels.csv"))
            .arg("--out")
            .arg(dir.path().join("catalogue.fkt"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );

        // The camera sees items 4, 1, 5 (in that order), smaller and re-compressed.
        let camera = dir.path().join("camera");
        std::fs::create_dir(&camera).unwrap();
        let mut camera_ids = Vec::new();
        for (frame, item) in [4usize, 1, 5].iter().enumerate() {
            let image = image::open(catalogue.join(&picked[*item]))
                .unwrap()
                .to_rgb8();
            let image = image::imageops::resize(&image, 180, 180, image::imageops::Triangle);
            let mut jpeg = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 80)
                .encode_image(&image)
                .unwrap();
            std::fs::write(camera.join(format!("frame-{frame}.jpg")), jpeg).unwrap();
            camera_ids.push(picked[*item].trim_end_matches(".jpg").to_string());
        }
        Scene { dir, camera_ids }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a config with `display` and `trigger` sections; returns its path.
    fn config(&self, name: &str, trigger: &str, display: &str) -> PathBuf {
        let text = format!(
            r#"
[catalogue]
table = "catalogue.fkt"
[camera]
kind = "folder"
path = "camera"
[trigger]
{trigger}
[display]
{display}
[kiosk]
results_secs = 1.0
debounce_ms = 50
top = 5
camera_retry_max_secs = 0.5
[scan_log]
path = "logs/scans.jsonl"
"#
        );
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// A running kiosk process with its stderr in a file and a systemd notify socket.
struct Kiosk {
    child: Child,
    stderr_path: PathBuf,
    /// What the kiosk told "systemd", read by a thread as systemd would (a full socket queue
    /// would block the sender).
    notices: Arc<Mutex<Vec<String>>>,
}

impl Kiosk {
    fn start(scene: &Scene, config: &Path, stdin: Stdio) -> Kiosk {
        let stderr_path = scene.path(&format!(
            "stderr-{}.log",
            config.file_stem().unwrap().to_str().unwrap()
        ));
        let notify_path = scene.path("notify.sock");
        let _ = std::fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        let notices = Arc::new(Mutex::new(Vec::new()));
        let received = Arc::clone(&notices);
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok(n) = notify.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                received.lock().unwrap().push(text);
            }
        });
        let child = common::fashion_kiosk()
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("FASHION_KIOSK_LOG", "info")
            .env("NOTIFY_SOCKET", &notify_path)
            .env("WATCHDOG_USEC", "400000")
            .stdin(stdin)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap();
        Kiosk {
            child,
            stderr_path,
            notices,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Whether a systemd notification so far had the line `what`.
    fn notified(&self, what: &str) -> bool {
        let notices = self.notices.lock().unwrap();
        notices.iter().any(|n| n.lines().any(|l| l == what))
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0);
    }

    fn wait_ready(&mut self) {
        let start = Instant::now();
        while !self.notified("READY=1") {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("kiosk exited ({status}) before ready:\n{}", self.stderr());
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "not ready:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "kiosk did not stop:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Kiosk {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn scan_log(scene: &Scene) -> Vec<serde_json::Value> {
    std::fs::read_to_string(scene.path("logs/scans.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each scan log line is JSON"))
        .collect()
}

/// Every screen written so far, in order, as canvases (not the temporary files of a write in
/// progress).
fn screens(dir: &Path) -> Vec<Canvas> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.retain(|p| {
        let name = p.file_name().unwrap().to_string_lossy();
        name.starts_with("screen-") && name.ends_with(".png")
    });
    files.sort();
    files
        .iter()
        .map(|p| {
            let image = image::open(p).unwrap().to_luma8();
            assert_eq!(
                image.dimensions(),
                (256, 128),
                "{} not at scale 2",
                p.display()
            );
            Canvas::from_image(&image).unwrap()
        })
        .collect()
}

fn results_screen(record: &serde_json::Value) -> Screen {
    Screen::Results {
        items: record["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["id"].as_str().unwrap().to_string(),
                    r["score"].as_f64().unwrap() as f32,
                )
            })
            .collect(),
    }
}

/// Whether the top `rows` pixel rows of `canvas` equal those of `screen` (for error screens,
/// whose title bar is known and whose detail text is the error message).
fn top_rows_match(canvas: &Canvas, screen: &Screen, rows: u32) -> bool {
    let want = Canvas::of(screen);
    (0..rows).all(|y| (0..128).all(|x| canvas.is_lit(x, y) == want.is_lit(x, y)))
}

fn press(socket: &Path) {
    UnixDatagram::unbound()
        .unwrap()
        .send_to(b"press", socket)
        .unwrap();
}

#[test]
fn kiosk_scans_on_presses_survives_faults_and_reloads() {
    let scene = Scene::new();
    let config = scene.config(
        "kiosk.toml",
        "kind = \"socket\"\npath = \"trigger.sock\"",
        "kind = \"simulated\"\nscreens = \"screens\"\nscale = 2",
    );
    let mut kiosk = Kiosk::start(&scene, &config, Stdio::null());
    kiosk.wait_ready();
    let trigger = scene.path("trigger.sock");
    let scene_ref = &scene;
    let lines = |n: usize| move || scan_log(scene_ref).len() >= n;

    // A bouncing contact: five datagrams within a millisecond are one press, one scan.
    for _ in 0..5 {
        press(&trigger);
    }
    wait_for("scan 1", &kiosk, lines(1));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(scan_log(&scene).len(), 1, "bounce caused a second scan");

    // Two more presses: the camera's next two frames.
    press(&trigger);
    wait_for("scan 2", &kiosk, lines(2));
    press(&trigger);
    wait_for("scan 3", &kiosk, lines(3));
    let log = scan_log(&scene);
    for (record, id) in log.iter().zip(&scene.camera_ids) {
        assert_eq!(record["outcome"], "ok", "{record}");
        assert_eq!(record["results"][0]["id"], id.as_str(), "{record}");
        assert!(
            record["results"][0]["score"].as_f64().unwrap() > 0.8,
            "{record}"
        );
        assert_eq!(record["results"].as_array().unwrap().len(), 5);
        let latency = &record["latency_ms"];
        for stage in ["capture", "preprocess", "embed", "search", "total"] {
            assert!(latency[stage].as_f64().unwrap() >= 0.0, "{stage}: {record}");
        }
        assert!(latency["total"].as_f64() > latency["embed"].as_f64());
        assert!(record["time"].as_str().unwrap().ends_with('Z'));
    }
    assert!(
        kiosk.notified("WATCHDOG=1"),
        "no watchdog pings: {:?}",
        kiosk.notices
    );

    // The camera is unplugged: the scan fails with a camera error, then the kiosk shows the
    // idle screen again by itself once the camera is back.
    let camera = scene.path("camera");
    let unplugged = scene.path("camera-unplugged");
    std::fs::rename(&camera, &unplugged).unwrap();
    press(&trigger);
    wait_for("scan 4", &kiosk, lines(4));
    let failed = scan_log(&scene)[3].clone();
    assert_eq!(failed["outcome"], "error", "{failed}");
    assert_eq!(failed["version"], 2, "{failed}");
    assert_eq!(failed["error"]["kind"], "camera_lost", "{failed}");
    assert!(
        failed["error"]["message"]
            .as_str()
            .unwrap()
            .contains("camera"),
        "{failed}"
    );
    std::fs::rename(&unplugged, &camera).unwrap();
    let idle = Canvas::of(&Screen::Idle { items: 6 });
    wait_for("idle screen after the camera came back", &kiosk, || {
        screens(&scene.path("screens")).last() == Some(&idle)
    });
    press(&trigger);
    wait_for("scan 5", &kiosk, lines(5));
    assert_eq!(
        scan_log(&scene)[4]["results"][0]["id"],
        scene.camera_ids[0].as_str()
    );

    // A bad table arrives (replaced atomically, as an installer would) and SIGHUP asks for a
    // reload: refused, the error shown, the old table kept.
    let bad = scene.path("incoming.fkt");
    std::fs::write(&bad, b"FKTABLE\0 but not really a table").unwrap();
    std::fs::rename(&bad, scene.path("catalogue.fkt")).unwrap();
    kiosk.signal(libc::SIGHUP);
    let reload_failed = Screen::Message {
        title: "Reload failed".into(),
        detail: String::new(),
    };
    wait_for("reload failure screen", &kiosk, || {
        screens(&scene.path("screens"))
            .iter()
            .any(|c| top_rows_match(c, &reload_failed, 19))
    });
    assert!(
        kiosk.stderr().contains("reload refused"),
        "{}",
        kiosk.stderr()
    );
    press(&trigger);
    wait_for("scan 6", &kiosk, lines(6));
    assert_eq!(
        scan_log(&scene)[5]["results"][0]["id"],
        scene.camera_ids[1].as_str()
    );

    // SIGUSR1 is a press too.
    kiosk.signal(libc::SIGUSR1);
    wait_for("scan 7", &kiosk, lines(7));

    kiosk.signal(libc::SIGTERM);
    let status = kiosk.wait_exit();
    assert!(status.success(), "{status}: {}", kiosk.stderr());
    assert!(kiosk.notified("STOPPING=1"));

    // The screens, by pixels: idle at start, each scan's results as the scan log has them, the
    // camera error with the logged message, and "out of service" last.
    let shown = screens(&scene.path("screens"));
    assert!(shown.contains(&idle));
    let log = scan_log(&scene);
    for record in log.iter().filter(|r| r["outcome"] == "ok") {
        assert!(
            shown.contains(&Canvas::of(&results_screen(record))),
            "no screen shows {record}"
        );
    }
    let camera_error = Canvas::of(&Screen::Message {
        title: "Camera offline".into(),
        detail: failed["error"]["message"].as_str().unwrap().into(),
    });
    assert!(shown.contains(&camera_error));
    assert!(shown
        .iter()
        .any(|c| *c == Canvas::of(&Screen::Scanning { tenths: 0 })));
    assert_eq!(shown.last(), Some(&Canvas::of(&Screen::Stopped)));
    assert!(!kiosk.stderr().contains("panicked"));
}

#[test]
fn kiosk_without_its_display_runs_headless_and_stops_at_end_of_stdin() {
    let scene = Scene::new();
    let config = scene.config(
        "headless.toml",
        "kind = \"stdin\"",
        "kind = \"ssd1306\"\nbus = \"/nonexistent/i2c-9\"",
    );
    let mut kiosk = Kiosk::start(&scene, &config, Stdio::piped());
    kiosk.wait_ready();
    let mut stdin = kiosk.child.stdin.take().unwrap();
    stdin.write_all(b"\n").unwrap();
    wait_for("a scan", &kiosk, || scan_log(&scene).len() == 1);
    drop(stdin);
    let status = kiosk.wait_exit();
    assert!(status.success(), "{status}: {}", kiosk.stderr());
    let err = kiosk.stderr();
    assert!(
        err.contains("running on without it and retrying") && err.contains("/nonexistent/i2c-9"),
        "{err}"
    );
    assert_eq!(
        scan_log(&scene)[0]["results"][0]["id"],
        scene.camera_ids[0].as_str()
    );
}

#[test]
fn kiosk_without_a_table_shows_why_and_exits_with_failure() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kiosk.toml");
    std::fs::write(
        &config,
        "[catalogue]\ntable = \"missing.fkt\"\n[camera]\nkind = \"folder\"\npath = \"camera\"\n\
         [trigger]\nkind = \"signal\"\n[display]\nkind = \"simulated\"\nscreens = \"screens\"\nscale = 2\n",
    )
    .unwrap();
    let out = common::fashion_kiosk()
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("missing.fkt") && !err.contains("panicked"),
        "{err}"
    );
    let shown = screens(&dir.path().join("screens"));
    let no_catalogue = Screen::Message {
        title: "No catalogue".into(),
        detail: String::new(),
    };
    assert!(top_rows_match(shown.last().unwrap(), &no_catalogue, 19));
}

#[test]
fn every_start_up_fault_shows_its_screen_and_exits_with_failure() {
    let scene = Scene::new();
    // A scan log that cannot be opened (its folder would be inside a file), and a trigger socket
    // that cannot be bound (its folder does not exist).
    std::fs::write(scene.path("logs"), "a file, not a folder").unwrap();
    let cases = [
        (
            "scanlog.toml",
            "kind = \"signal\"",
            "Scan log",
            "scan log folder",
        ),
        (
            "trigger.toml",
            "kind = \"socket\"\npath = \"missing/trigger.sock\"",
            "No button",
            "missing/trigger.sock",
        ),
    ];
    for (name, trigger, title, named) in cases {
        let config = scene.config(
            name,
            trigger,
            "kind = \"simulated\"\nscreens = \"screens\"\nscale = 2",
        );
        if title == "No button" {
            let text = std::fs::read_to_string(&config)
                .unwrap()
                .replace("path = \"logs/scans.jsonl\"", "path = \"scans.jsonl\"");
            std::fs::write(&config, text).unwrap();
        }
        let out = common::fashion_kiosk()
            .args(["run", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert!(err.contains(named) && !err.contains("panicked"), "{err}");
        let shown = screens(&scene.path("screens"));
        let fault = Screen::Message {
            title: title.into(),
            detail: String::new(),
        };
        assert!(
            top_rows_match(shown.last().unwrap(), &fault, 19),
            "{name}: the last screen is not {title:?}"
        );
    }
}

#[test]
fn signals_sent_while_the_model_loads_wait_their_turn() {
    let scene = Scene::new();
    let config = scene.config(
        "early.toml",
        "kind = \"signal\"",
        "kind = \"simulated\"\nscreens = \"screens\"\nscale = 2",
    );
    let mut kiosk = Kiosk::start(&scene, &config, Stdio::null());
    // SIGHUP's default action would end the process: once the kiosk says it is starting (its
    // handlers are in place, the model not loaded yet) it must be queued as a reload instead.
    wait_for("the starting status", &kiosk, || {
        kiosk.notified("STATUS=starting: loading the model and the catalogue")
    });
    assert!(!kiosk.notified("READY=1"), "ready before the signal");
    kiosk.signal(libc::SIGHUP);
    kiosk.wait_ready();
    wait_for("the reload", &kiosk, || kiosk.stderr().contains("reloaded"));
    kiosk.signal(libc::SIGTERM);
    assert!(kiosk.wait_exit().success(), "{}", kiosk.stderr());
}

#[test]
fn check_reports_each_part_and_fails_on_a_missing_camera() {
    let scene = Scene::new();
    let config = scene.config(
        "check.toml",
        "kind = \"signal\"",
        "kind = \"simulated\"\nscreens = \"screens\"\nscale = 2",
    );
    let out = common::fashion_kiosk()
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for part in [
        "config",
        "model",
        "catalogue",
        "camera",
        "look-up",
        "trigger",
        "display",
        "scan log",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(part) && l.contains(" ok ")),
            "{part}: {stdout}"
        );
    }
    assert!(stdout.contains("(6 items)"), "{stdout}");

    std::fs::remove_dir_all(scene.path("camera")).unwrap();
    let out = common::fashion_kiosk()
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    let camera = stdout.lines().find(|l| l.starts_with("camera")).unwrap();
    assert!(
        camera.contains("FAIL") && camera.contains("camera"),
        "{camera}"
    );
    assert!(stdout
        .lines()
        .any(|l| l.starts_with("model") && l.contains(" ok ")));

    // The same as JSON for fleet tooling: the findings and the health they amount to.
    let out = common::fashion_kiosk()
        .args(["check", "--json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], false);
    let camera = report["parts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["part"] == "camera")
        .unwrap();
    assert_eq!(camera["ok"], false);
    let health = &report["health"];
    assert_eq!(health["camera"]["up"], false);
    assert_eq!(health["display"]["up"], true);
    assert_eq!(health["catalogue"]["items"], 6);
    assert_eq!(health["model"]["fingerprint"].as_str().unwrap().len(), 64);
}

/// A store-like empty scene: a gradient wall with a few blocks, and mild noise of its own.
fn empty_scene(seed: u32) -> image::RgbImage {
    let mut state = seed.max(1);
    image::RgbImage::from_fn(320, 240, |x, y| {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let noise = (state % 7) as i32 - 3;
        let mut p = [60 + x as i32 / 4, 90 + y as i32 / 5, 140 - x as i32 / 6];
        if (20..70).contains(&x) && (30..120).contains(&y) {
            p = [200, 180, 40];
        }
        if y > 200 {
            p = [90, 60, 50];
        }
        image::Rgb(p.map(|c| (c + noise).clamp(0, 255) as u8))
    })
}

#[test]
fn kiosk_calibrated_through_sigusr2_finds_the_item_and_says_when_nothing_is_there() {
    let scene = Scene::new();
    // The camera sees the empty scene, then an item held up in front of it.
    let camera = scene.path("camera");
    std::fs::remove_dir_all(&camera).unwrap();
    std::fs::create_dir(&camera).unwrap();
    empty_scene(1).save(camera.join("a-empty.png")).unwrap();
    let item_id = &scene.camera_ids[1];
    let item = image::open(repo("demo/catalogue").join(format!("{item_id}.jpg")))
        .unwrap()
        .to_rgb8();
    let item = image::imageops::resize(&item, 160, 160, image::imageops::Triangle);
    let mut frame = empty_scene(2);
    image::imageops::overlay(&mut frame, &item, 90, 40);
    frame.save(camera.join("b-item.png")).unwrap();

    let config = scene.config(
        "calibrated.toml",
        "kind = \"socket\"\npath = \"trigger.sock\"",
        "kind = \"simulated\"\nscreens = \"screens\"\nscale = 2\n\
         [scene]\nreference = \"state/empty-scene.png\"\ncalibration_frames = 1",
    );
    let mut kiosk = Kiosk::start(&scene, &config, Stdio::null());
    kiosk.wait_ready();
    let reference = scene.path("state/empty-scene.png");
    assert!(!reference.exists());

    // SIGUSR2: "Calibrating" for 3 s, then the next frame (the empty scene) is the reference.
    kiosk.signal(libc::SIGUSR2);
    // The file is saved before calibration ends; a press before its end is not a scan.
    wait_for("the end of calibration", &kiosk, || {
        kiosk.stderr().contains("calibrated: ")
    });
    let saved = image::open(&reference).unwrap().to_rgb8();
    assert_eq!(
        saved,
        empty_scene(1),
        "the reference is the averaged (here: one) frame"
    );
    let shown = screens(&scene.path("screens"));
    assert!(shown.contains(&Canvas::of(&Screen::Calibrating {
        step: CalibrationStep::EmptyScene,
        seconds: 3
    })));

    // The item frame: found against the reference, on white, and recognised.
    let trigger = scene.path("trigger.sock");
    press(&trigger);
    wait_for("scan 1", &kiosk, || !scan_log(&scene).is_empty());
    let found = scan_log(&scene)[0].clone();
    assert_eq!(found["region"], "reference", "{found}");
    assert_eq!(found["results"][0]["id"], item_id.as_str(), "{found}");
    assert!(found["latency_ms"]["foreground"].as_f64().unwrap() > 0.0);

    // The empty scene again: nothing to scan, no results, the screen says so.
    std::thread::sleep(Duration::from_millis(100));
    press(&trigger);
    wait_for("scan 2", &kiosk, || scan_log(&scene).len() >= 2);
    let nothing = scan_log(&scene)[1].clone();
    assert_eq!(nothing["outcome"], "nothing", "{nothing}");
    assert_eq!(nothing["results"].as_array().unwrap().len(), 0);
    let nothing_screen = Canvas::of(&Screen::NothingToScan);
    wait_for("the nothing-to-scan screen", &kiosk, || {
        screens(&scene.path("screens")).contains(&nothing_screen)
    });
    kiosk.signal(libc::SIGTERM);
    assert!(kiosk.wait_exit().success(), "{}", kiosk.stderr());

    // Off the device: `check` sees the calibration, `query --reference` does the same look-up,
    // and `calibrate` writes a reference from the camera.
    let out = common::fashion_kiosk()
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let scene_line = stdout.lines().find(|l| l.starts_with("scene")).unwrap();
    assert!(
        scene_line.contains(" ok ") && scene_line.contains("calibrated ("),
        "{stdout}"
    );
    let query_item = |arguments: &[&str]| -> serde_json::Value {
        let out = common::fashion_kiosk()
            .args(["query", "--json"])
            .args(arguments)
            .arg("--table")
            .arg(scene.path("catalogue.fkt"))
            .arg("--image")
            .arg(camera.join("b-item.png"))
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)))
    };
    // `query --config`: the kiosk's own pipeline, so exactly what its scan of the frame logged.
    let out = common::fashion_kiosk()
        .args(["query", "--json", "--config"])
        .arg(&config)
        .arg("--image")
        .arg(camera.join("b-item.png"))
        .output()
        .unwrap();
    let as_kiosk: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    // Scores are f32 in both (JSON prints them with different digits).
    let id_and_score = |results: &serde_json::Value| -> Vec<(String, f32)> {
        results
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let score = r["score"].as_f64().unwrap() as f32;
                (r["id"].as_str().unwrap().into(), score)
            })
            .collect()
    };
    assert_eq!(as_kiosk["region"], found["region"], "{as_kiosk}");
    assert_eq!(as_kiosk["colour"], found["colour"], "{as_kiosk}");
    assert_eq!(
        id_and_score(&as_kiosk["results"]),
        id_and_score(&found["results"]),
        "query --config and the scan disagree"
    );
    assert_eq!(
        as_kiosk["results"].as_array().unwrap().len(),
        5,
        "kiosk.top"
    );
    let with_reference = ["--reference", reference.to_str().unwrap()];
    let result = query_item(&with_reference);
    assert_eq!(result["region"], "reference");
    assert_eq!(result["results"][0]["id"], item_id.as_str());
    // Without the reference, the item still stands out from the store around it.
    let alone = query_item(&[]);
    assert_eq!(alone["region"], "salient");
    assert_eq!(alone["results"][0]["id"], item_id.as_str());
    // With the test-time augmentations: 12 views (itself, five crops, and their mirror images).
    let augmented = query_item(&[&with_reference[..], &["--flip", "--crops"]].concat());
    assert_eq!(augmented["results"][0]["id"], item_id.as_str());
    assert_ne!(
        augmented["results"][0]["score"], result["results"][0]["score"],
        "the augmented views changed nothing"
    );
    // `foreground` shows an installer what a scan cuts out of each frame.
    let cuts = scene.path("cuts");
    let out = common::fashion_kiosk()
        .arg("foreground")
        .arg("--images")
        .arg(&camera)
        .arg("--reference")
        .arg(&reference)
        .arg("--out")
        .arg(&cuts)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("a-empty.png: nothing to scan"), "{stdout}");
    assert!(stdout.contains("b-item.png: item at"), "{stdout}");
    assert!(!cuts.join("a-empty.png").exists());
    let cut = image::open(cuts.join("b-item.png")).unwrap().to_rgb8();
    assert_eq!(cut.width(), cut.height(), "a square, as the model gets it");
    assert!(
        (160..200).contains(&cut.width()),
        "the 160-pixel item and its margin: {}",
        cut.width()
    );
    assert_eq!(cut.get_pixel(0, 0).0, [255, 255, 255], "on white");

    std::fs::remove_file(&reference).unwrap();
    let out = common::fashion_kiosk()
        .args(["calibrate", "--frames", "2", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Two frames averaged: the empty scene and the item frame.
    assert_eq!(
        image::open(&reference).unwrap().to_rgb8().dimensions(),
        (320, 240)
    );
}

#[test]
fn query_images_prints_a_line_per_frame_and_recall_against_file_names() {
    let scene = Scene::new();
    let out = common::fashion_kiosk()
        .args(["query", "--json", "--table"])
        .arg(scene.path("catalogue.fkt"))
        .arg("--images")
        .arg(scene.path("camera"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    for (line, frame) in lines.iter().zip(0..) {
        assert_eq!(line["image"], format!("frame-{frame}.jpg"));
        assert_eq!(line["region"], "centre", "a studio shot is embedded whole");
        assert!(line["latency_ms"]["embed"].as_f64().unwrap() > 0.0);
    }
    // The file names here are "frame-N", not item ids: recall is 0 and says over how many.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("3 images") && err.contains("Recall@1 0.0000"),
        "{err}"
    );
}

/// `image` under a shop light that tints it (red up, blue down).
fn tinted(image: &image::RgbImage) -> image::RgbImage {
    let light = [1.12, 1.0, 0.8];
    let mut out = image.clone();
    for p in out.pixels_mut() {
        for (value, gain) in p.0.iter_mut().zip(light) {
            *value = (*value as f32 * gain).min(255.0) as u8;
        }
    }
    out
}

/// The empty scene with a matte white card (and two fingers) held up in it.
fn with_card(mut scene: image::RgbImage) -> image::RgbImage {
    for y in 60..180 {
        for x in 110..210 {
            let finger = y > 168 && (130..150).contains(&x);
            let v = if finger {
                [190, 140, 120]
            } else {
                [215, 215, 215]
            };
            scene.put_pixel(x, y, image::Rgb(v));
        }
    }
    scene
}

#[test]
fn kiosk_calibrates_light_with_a_white_card_locks_the_camera_and_keeps_it_on_a_bad_card() {
    let scene = Scene::new();
    // Under a tinted light, the camera sees: the empty scene, the card held up, the item.
    let camera = scene.path("camera");
    std::fs::remove_dir_all(&camera).unwrap();
    std::fs::create_dir(&camera).unwrap();
    tinted(&empty_scene(1))
        .save(camera.join("a-empty.png"))
        .unwrap();
    tinted(&with_card(empty_scene(2)))
        .save(camera.join("b-card.png"))
        .unwrap();
    let item_id = &scene.camera_ids[2];
    let item = image::open(repo("demo/catalogue").join(format!("{item_id}.jpg")))
        .unwrap()
        .to_rgb8();
    let item = image::imageops::resize(&item, 160, 160, image::imageops::Triangle);
    let mut frame = empty_scene(3);
    image::imageops::overlay(&mut frame, &item, 80, 40);
    tinted(&frame).save(camera.join("c-item.png")).unwrap();

    let config = scene.config(
        "card.toml",
        "kind = \"socket\"\npath = \"trigger.sock\"",
        "kind = \"simulated\"\nscreens = \"screens\"\nscale = 2\n\
         [scene]\nreference = \"state/empty-scene.png\"\ncalibration_frames = 1\n\
         card = true\ncard_level = 215",
    );
    // The folder camera with simulated exposure and white-balance controls.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("path = \"camera\"", "path = \"camera\"\ncontrols = true");
    std::fs::write(&config, text).unwrap();
    let mut kiosk = Kiosk::start(&scene, &config, Stdio::null());
    kiosk.wait_ready();
    let record = scene.path("state/empty-scene.toml");

    // SIGUSR2: step away, the empty scene, then the card. The record is written before the kiosk
    // leaves calibration (its log line), and a press before that is not a scan.
    kiosk.signal(libc::SIGUSR2);
    wait_for("the calibration", &kiosk, || {
        kiosk.stderr().contains("calibrated: ")
    });
    assert!(record.exists(), "{}", kiosk.stderr());
    let saved = std::fs::read_to_string(&record).unwrap();
    assert!(saved.contains("[card]"), "{saved}");
    assert!(
        saved.contains("Auto Exposure") && saved.contains("value = 1"),
        "exposure locked to manual: {saved}"
    );
    let shown = screens(&scene.path("screens"));
    for step in [CalibrationStep::EmptyScene, CalibrationStep::Card] {
        assert!(
            shown.contains(&Canvas::of(&Screen::Calibrating { step, seconds: 0 })),
            "{step:?} never shown while capturing"
        );
    }

    // The item under the same light: corrected by the card's gains, which undo the tint.
    let trigger = scene.path("trigger.sock");
    press(&trigger);
    wait_for("scan 1", &kiosk, || !scan_log(&scene).is_empty());
    let found = scan_log(&scene)[0].clone();
    assert_eq!(found["colour"]["source"], "card", "{found}");
    let gains: Vec<f64> = found["colour"]["gains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_f64().unwrap())
        .collect();
    for (gain, light) in gains.iter().zip([1.12, 1.0, 0.8]) {
        assert!((gain * light - 1.0).abs() < 0.05, "gains {gains:?}");
    }
    assert_eq!(found["results"][0]["id"], item_id.as_str(), "{found}");

    // A second calibration whose "card" frame shows no card: refused, the first one kept.
    tinted(&empty_scene(4))
        .save(camera.join("b-card.png"))
        .unwrap();
    let before = std::fs::read(&record).unwrap();
    let log_lines = kiosk.stderr().lines().count();
    kiosk.signal(libc::SIGUSR2);
    wait_for("the refusal", &kiosk, || {
        kiosk
            .stderr()
            .lines()
            .skip(log_lines)
            .any(|l| l.contains("calibration failed"))
    });
    assert_eq!(
        std::fs::read(&record).unwrap(),
        before,
        "the calibration changed"
    );
    let refusal = Screen::Message {
        title: "Calibration".into(),
        detail: "failed".into(),
    };
    wait_for("the refusal on screen", &kiosk, || {
        screens(&scene.path("screens"))
            .iter()
            .any(|c| top_rows_match(c, &refusal, 19))
    });
    assert!(
        kiosk.stderr().contains("no card in view"),
        "{}",
        kiosk.stderr()
    );
    kiosk.signal(libc::SIGTERM);
    assert!(kiosk.wait_exit().success(), "{}", kiosk.stderr());

    // A fresh start re-applies the locked controls before the first frame; `check` shows the
    // card and the controls.
    let mut kiosk = Kiosk::start(&scene, &config, Stdio::null());
    kiosk.wait_ready();
    press(&trigger);
    wait_for("the camera", &kiosk, || {
        kiosk.stderr().contains("camera controls as calibrated")
    });
    kiosk.signal(libc::SIGTERM);
    assert!(kiosk.wait_exit().success(), "{}", kiosk.stderr());
    let out = common::fashion_kiosk()
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = |part: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(part))
            .unwrap_or_else(|| panic!("no {part} line: {stdout}"))
            .to_string()
    };
    assert!(line("scene").contains("white card gains"), "{stdout}");
    let controls = line("controls");
    assert!(
        controls.contains(" ok ") && controls.contains("had drifted"),
        "a fresh simulated camera starts automatic, check sets it back: {stdout}"
    );
}
