//! Recommendations in the running kiosk (the tiny stand-in model on the demo catalogue): the
//! scan log says where each result came from, nothing out of stock or of another gender follows
//! the scanned item, a second press shows what goes with it, and a stock file or trends sidecar
//! that goes bad on reload is refused while the last good one stays in use.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{fashion_kiosk, fashion_kiosk_args, log_lines, repo, wait_for};

const TINY: &str = "tests/fixtures/tiny-model/tiny.manifest.json";
/// How long the kiosk may take for each step.
const WAIT: Duration = Duration::from_secs(120);

#[test]
fn the_kiosk_recommends_in_stock_items_says_why_shows_what_goes_with_and_survives_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let run = |command: &mut Command| {
        let out = command.output().unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(fashion_kiosk_args(&["index", "--catalogue"])
        .arg(repo("demo/catalogue"))
        .arg("--labels")
        .arg(repo("demo/labels.csv"))
        .arg("--out")
        .arg(work.join("catalogue.fkt"))
        .arg("--model")
        .arg(repo(TINY)));
    // Every third demo item out of stock.
    let labels = std::fs::read_to_string(repo("demo/labels.csv")).unwrap();
    let mut stock = String::from("id,in_stock\n");
    let mut out_of_stock = std::collections::HashSet::new();
    let mut gender = std::collections::HashMap::new();
    for (n, line) in labels.lines().skip(1).enumerate() {
        let fields: Vec<&str> = line.split(',').collect();
        let available = n % 3 != 0;
        stock += &format!("{},{available}\n", fields[1]);
        if !available {
            out_of_stock.insert(fields[1].to_string());
        }
        gender.insert(fields[1].to_string(), fields[2].to_string());
    }
    std::fs::write(work.join("stock.csv"), &stock).unwrap();
    // Scan history from the shopper simulator, made into the co-scan sidecar.
    run(Command::new("python3")
        .arg(repo("benches/shoppers.py"))
        .arg("--labels")
        .arg(repo("demo/labels.csv"))
        .args(["--kiosks", "2", "--days", "3", "--test-days", "1", "--out"])
        .arg(work.join("sim")));
    let built = run(fashion_kiosk_args(&["trends", "--table"])
        .arg(work.join("catalogue.fkt"))
        .arg("--logs")
        .arg(work.join("sim/train/kiosk-1/scans.jsonl"))
        .arg(work.join("sim/train/kiosk-2/scans.jsonl"))
        .arg("--out")
        .arg(work.join("trends.json"))
        .arg("--held-out")
        .arg(work.join("sim/test/kiosk-1/scans.jsonl")));
    assert!(
        built.contains("sessions") && built.contains("Recall@5"),
        "{built}"
    );

    std::fs::write(
        work.join("kiosk.toml"),
        format!(
            r#"
[model]
manifest = "{}"
threads = 1
[catalogue]
table = "catalogue.fkt"
[camera]
kind = "folder"
path = "{}"
[trigger]
kind = "stdin"
[display]
kind = "simulated"
screens = "screens"
[kiosk]
results_secs = 60
[scan_log]
path = "scans.jsonl"
[recommend]
stock = "stock.csv"
trends = "trends.json"
goes_with = true
"#,
            repo(TINY).display(),
            repo("demo/photos").display()
        ),
    )
    .unwrap();
    let stderr_path = work.join("kiosk.log");
    let mut kiosk = fashion_kiosk()
        .args(["run", "--config"])
        .arg(work.join("kiosk.toml"))
        .env("FASHION_KIOSK_LOG", "info")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let stderr = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let log = work.join("scans.jsonl");
    let mut stdin = kiosk.stdin.take().unwrap();
    let mut press = || {
        // A person's presses are more than the 50 ms debounce apart.
        std::thread::sleep(Duration::from_millis(150));
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
    };
    wait_for(
        "the kiosk to start",
        || stderr().contains("ready"),
        &stderr_path,
        WAIT,
    );
    assert!(stderr().contains("stock: "), "{}", stderr());

    let check = |record: &serde_json::Value| {
        let results = record["results"].as_array().unwrap();
        assert!(!results.is_empty(), "{record}");
        let anchor = results[0]["id"].as_str().unwrap();
        for r in results {
            assert!(r["source"].is_string(), "no source: {r}");
            assert!(r["relevance"].is_number(), "no relevance: {r}");
        }
        for r in &results[1..] {
            let id = r["id"].as_str().unwrap();
            assert!(!out_of_stock.contains(id), "{id} is out of stock: {record}");
            let (a, b) = (&gender[anchor], &gender[id]);
            assert!(
                a == b || a == "Unisex" || b == "Unisex",
                "{anchor} {a} → {id} {b}"
            );
        }
    };
    press();
    wait_for(
        "the first scan",
        || log_lines(&log).len() == 1,
        &stderr_path,
        WAIT,
    );
    check(&log_lines(&log)[0]);
    // A second press while the results show: what goes with the item.
    press();
    wait_for(
        "goes with",
        || stderr().contains("goes with:"),
        &stderr_path,
        WAIT,
    );

    // The stock file goes bad: refused on reload, naming the line; the last good one stays.
    std::fs::write(work.join("stock.csv"), format!("{stock}12345,perhaps\n")).unwrap();
    std::fs::remove_file(work.join("trends.json")).unwrap();
    Command::new("kill")
        .args(["-HUP", &kiosk.id().to_string()])
        .status()
        .unwrap();
    wait_for(
        "the refused stock",
        || stderr().contains("keeping the stock loaded before"),
        &stderr_path,
        WAIT,
    );
    let said = stderr();
    assert!(
        said.contains("stock.csv") && said.contains("perhaps"),
        "{said}"
    );
    assert!(said.contains("keeping the trends loaded before"), "{said}");
    // It keeps scanning with the last good stock (a press on "goes with" scans again).
    for scans in 2..=4 {
        press();
        wait_for(
            "a scan",
            || log_lines(&log).len() == scans,
            &stderr_path,
            WAIT,
        );
        check(&log_lines(&log)[scans - 1]);
        press();
        wait_for(
            "goes with",
            || stderr().matches("goes with:").count() == scans,
            &stderr_path,
            WAIT,
        );
    }
    drop(stdin);
    assert!(kiosk.wait().unwrap().success(), "{}", stderr());

    // `check` names both bad files.
    let out = fashion_kiosk()
        .args(["check", "--config"])
        .arg(work.join("kiosk.toml"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    let line = |part: &str| {
        said.lines()
            .find(|l| l.starts_with(part))
            .unwrap_or("")
            .to_string()
    };
    assert!(
        line("stock").contains("FAIL") && line("stock").contains("line 302"),
        "{said}"
    );
    assert!(
        line("trends").contains("FAIL") && line("trends").contains("trends.json"),
        "{said}"
    );

    // Started with neither file: it says so and scans on the rules alone.
    std::fs::remove_file(work.join("stock.csv")).unwrap();
    let out = fashion_kiosk()
        .args(["run", "--config"])
        .arg(work.join("kiosk.toml"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut kiosk| {
            kiosk.stdin.take().unwrap().write_all(b"\n")?;
            kiosk.wait_with_output()
        })
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("recommending without a stock file"), "{said}");
    assert!(
        said.contains("recommending without a trends file"),
        "{said}"
    );
    assert_eq!(log_lines(&log).len(), 5, "{said}");
}
