//! Outfits: the garment parser in tract against onnxruntime's references, `query --outfit` on the
//! demo's street photo and a held-up item, a parser from another build refused in one line, and
//! the kiosk scanning a person garment by garment (scan log and screen) or, without its parser,
//! falling back to the whole frame, and "goes with" completing an outfit. The embedder is the tiny
//! stand-in model; the parser is the bundled one.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{fashion_kiosk, fashion_kiosk_args, log_lines, repo, wait_for};
use kiosk_service::device::display::Canvas;
use kiosk_service::device::Screen;
use kiosk_vision::parser::Parser;
use kiosk_vision::preprocess::{decode_file, Region};

const TINY: &str = "tests/fixtures/tiny-model/tiny.manifest.json";
/// How long the kiosk may take for each step (an outfit scan under qemu is slow).
const WAIT: Duration = Duration::from_secs(300);
const PARSER: &str = "models/garment-parser.manifest.json";
const PERSON: &str = "demo/photos/worn-outfit-0770.jpg";
const HELD_UP: &str = "demo/photos/casual-shoes-14560.jpg";

fn run(command: &mut Command) -> String {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The demo catalogue indexed with the tiny model, in `dir`.
fn demo_table(dir: &Path) -> std::path::PathBuf {
    let table = dir.join("catalogue.fkt");
    run(fashion_kiosk_args(&["index", "--catalogue"])
        .arg(repo("demo/catalogue"))
        .arg("--labels")
        .arg(repo("demo/labels.csv"))
        .arg("--out")
        .arg(&table)
        .arg("--model")
        .arg(repo(TINY)));
    table
}

#[test]
fn the_parser_in_tract_labels_the_cells_as_onnxruntime_does() {
    let text = std::fs::read_to_string(repo("tests/fixtures/garment-parity.json")).unwrap();
    let fixture: serde_json::Value = serde_json::from_str(&text).unwrap();
    let parser = Parser::load(&repo(PARSER)).unwrap();
    assert_eq!(
        parser.manifest().sha256,
        fixture["model_sha256"].as_str().unwrap(),
        "the fixtures are from another parser"
    );
    let mut session = parser.session().unwrap();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for image in fixture["images"].as_array().unwrap() {
        let name = image["image"].as_str().unwrap();
        let frame = decode_file(&repo(name)).unwrap();
        let scores = tract_linalg::multithread::multithread_tract_scope(
            kiosk_vision::model::executor(cores),
            || session.parse(&frame, Region::Whole).unwrap(),
        );
        let want: Vec<u64> = image["classes"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| row.as_array().unwrap().iter().map(|c| c.as_u64().unwrap()))
            .collect();
        let reference: Vec<f32> = image["scores"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|plane| plane.as_array().unwrap().iter())
            .flat_map(|row| {
                row.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap() as f32)
            })
            .collect();
        assert_eq!(reference.len(), scores.scores.len(), "{name}");
        let cells = scores.rows * scores.columns;
        let agree = (0..cells)
            .filter(|&cell| {
                let best = (0..scores.classes.len())
                    .max_by(|&a, &b| {
                        scores.scores[a * cells + cell].total_cmp(&scores.scores[b * cells + cell])
                    })
                    .unwrap();
                best as u64 == want[cell]
            })
            .count();
        let mean_error = scores
            .scores
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .sum::<f32>()
            / reference.len() as f32;
        println!("{name}: {agree}/{cells} cells agree, mean |score difference| {mean_error:.3}");
        // Resizing (PIL against fast_image_resize) differs by a grey level here and there: the
        // labels of a few cells on a boundary may flip, no more.
        assert!(
            agree * 100 >= cells * 97,
            "{name}: {agree}/{cells} cells agree"
        );
        assert!(
            mean_error < 0.1,
            "{name}: mean |score difference| {mean_error}"
        );
    }
}

#[test]
fn query_looks_up_each_garment_of_a_person_and_a_held_up_item_whole() {
    let dir = tempfile::tempdir().unwrap();
    let table = demo_table(dir.path());
    let query = |image: &str, outfit: bool| -> serde_json::Value {
        let mut command = fashion_kiosk();
        command
            .args(["query", "--json", "--table"])
            .arg(&table)
            .arg("--model")
            .arg(repo(TINY))
            .arg("--image")
            .arg(repo(image));
        if outfit {
            command.arg("--outfit");
        }
        serde_json::from_str(&run(&mut command)).unwrap()
    };
    let person = query(PERSON, true);
    assert_eq!(person["region"], "outfit", "{person}");
    assert!(person["results"].as_array().unwrap().is_empty());
    let garments = person["garments"].as_array().unwrap();
    assert!(garments.len() >= 2, "{person}");
    let categories = kiosk_pipeline::config::OutfitConfig::default().garments;
    let classes: Vec<&str> = garments
        .iter()
        .map(|g| g["class"].as_str().unwrap())
        .collect();
    assert!(classes.contains(&"upper"), "{classes:?}");
    let photo = decode_file(&repo(PERSON)).unwrap();
    let mut last_middle = 0;
    for garment in garments {
        let class = garment["class"].as_str().unwrap();
        let [x, y, w, h] = [0, 1, 2, 3].map(|i| garment["bbox"][i].as_u64().unwrap() as u32);
        assert!(
            x + w <= photo.width() && y + h <= photo.height(),
            "{garment}"
        );
        // Top to bottom.
        assert!(y + h / 2 >= last_middle, "{person}");
        last_middle = y + h / 2;
        let colour = garment["colour"].as_str().unwrap();
        assert!(
            kiosk_vision::palette::PALETTE
                .iter()
                .any(|(name, _)| *name == colour),
            "{colour}"
        );
        let results = garment["results"].as_array().unwrap();
        assert_eq!(results.len(), 5, "{garment}");
        for r in results {
            let category = r["subCategory"].as_str().unwrap();
            assert!(
                categories[class].categories.iter().any(|c| c == category),
                "{class}: {category}"
            );
        }
    }
    // Without --outfit the same photo is one query, as before.
    let whole = query(PERSON, false);
    assert_ne!(whole["region"], "outfit");
    assert!(whole.get("garments").is_none(), "{whole}");
    // A held-up item is not a person: looked up whole even with --outfit.
    let item = query(HELD_UP, true);
    assert_ne!(item["region"], "outfit", "{item}");
    assert_eq!(item["results"].as_array().unwrap().len(), 5);
}

#[test]
fn a_parser_that_does_not_match_its_manifest_is_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo(PARSER)).unwrap()).unwrap();
    manifest["sha256"] = "0".repeat(64).into();
    std::fs::copy(
        repo("models/garment-parser.onnx"),
        dir.path().join("garment-parser.onnx"),
    )
    .unwrap();
    let path = dir.path().join("garment-parser.manifest.json");
    std::fs::write(&path, manifest.to_string()).unwrap();
    let table = demo_table(dir.path());
    let out = fashion_kiosk()
        .args(["query", "--table"])
        .arg(&table)
        .arg("--model")
        .arg(repo(TINY))
        .arg("--image")
        .arg(repo(PERSON))
        .arg("--parser")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    // One error line (under qemu tract may add a warning about the emulated CPU's features).
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.to_lowercase().starts_with("error"))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains("does not match its manifest")
            && errors[0].contains(&*path.to_string_lossy()),
        "{stderr}"
    );
}

/// A kiosk config in `work` (`kiosk.toml`): the tiny model, `table`, a folder camera at
/// `work/camera`, simulated display, scan log, and `extra` sections.
fn write_config(work: &Path, table: &Path, extra: &str) -> std::path::PathBuf {
    let path = work.join("kiosk.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[model]
manifest = "{}"
[catalogue]
table = "{}"
[camera]
kind = "folder"
path = "camera"
[trigger]
kind = "stdin"
[display]
kind = "simulated"
screens = "screens"
[kiosk]
results_secs = 60
# Under qemu (the aarch64 test run) an outfit scan takes far longer than on a Pi.
scan_timeout_secs = 600
[scan_log]
path = "scans.jsonl"
{extra}
"#,
            repo(TINY).display(),
            table.display(),
        ),
    )
    .unwrap();
    path
}

/// Runs a kiosk on a camera that sees the demo's street photo, with `outfit` as its `[outfit]`
/// section; presses once and returns the scan's log record, the last screen and the kiosk's
/// stderr.
fn scan_once(work: &Path, table: &Path, outfit: &str) -> (serde_json::Value, Canvas, String) {
    let camera = work.join("camera");
    std::fs::create_dir_all(&camera).unwrap();
    std::fs::copy(repo(PERSON), camera.join("frame-0.jpg")).unwrap();
    let config = write_config(work, table, outfit);
    let stderr_path = work.join("kiosk.log");
    let mut kiosk = fashion_kiosk()
        .args(["run", "--config"])
        .arg(&config)
        .env("FASHION_KIOSK_LOG", "info")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let stderr = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let log = work.join("scans.jsonl");
    let mut stdin = kiosk.stdin.take().unwrap();
    wait_for(
        "the kiosk to start",
        || stderr().contains("ready"),
        &stderr_path,
        WAIT,
    );
    stdin.write_all(b"\n").unwrap();
    stdin.flush().unwrap();
    wait_for(
        "the scan",
        || log_lines(&log).len() == 1,
        &stderr_path,
        WAIT,
    );
    // The screen follows the log line.
    std::thread::sleep(Duration::from_millis(500));
    drop(stdin);
    kiosk.wait().unwrap();
    let mut screens: Vec<_> = std::fs::read_dir(work.join("screens"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with("screen-") && name.ends_with(".png")
        })
        .collect();
    screens.sort();
    // The screen shown after the scan: the last before "stopped" that is not a notice.
    let stopped = Canvas::of(&Screen::Stopped);
    let shown = screens
        .iter()
        .rev()
        .map(|p| Canvas::from_image(&image::open(p).unwrap().to_luma8()).unwrap())
        .find(|canvas| *canvas != stopped)
        .unwrap();
    (log_lines(&log).remove(0), shown, stderr())
}

#[test]
fn the_kiosk_shows_and_logs_a_persons_garments_and_without_its_parser_scans_whole() {
    let dir = tempfile::tempdir().unwrap();
    let table = demo_table(dir.path());

    let with = dir.path().join("with");
    std::fs::create_dir(&with).unwrap();
    let (record, screen, said) = scan_once(&with, &table, "[outfit]\nmax_garments = 4\n");
    assert!(said.contains("garment parser"), "{said}");
    assert_eq!(record["outcome"], "ok", "{record}");
    assert_eq!(record["region"], "outfit", "{record}");
    let garments = record["garments"].as_array().unwrap();
    assert!((2..=4).contains(&garments.len()), "{record}");
    let labels = kiosk_pipeline::config::OutfitConfig::default().garments;
    let mut rows = Vec::new();
    for g in garments {
        assert!(g["bbox"].as_array().unwrap().len() == 4, "{g}");
        assert!(
            g["colour"].is_string() && g["rgb"].as_array().unwrap().len() == 3,
            "{g}"
        );
        let ids: Vec<String> = g["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ids.len(), 5, "{g}");
        rows.push((labels[g["class"].as_str().unwrap()].label.clone(), ids));
    }
    // The screen is the outfit of the log, drawn by the shared renderer.
    assert!(
        screen == Canvas::of(&Screen::Outfit { garments: rows }),
        "the screen is not the logged outfit"
    );
    assert!(record["latency_ms"]["parse"].as_f64().unwrap() > 0.0);

    // The parser's file missing: one line says outfits are off, and the scan looks the frame up
    // whole.
    let without = dir.path().join("without");
    std::fs::create_dir(&without).unwrap();
    let (record, _, said) = scan_once(
        &without,
        &table,
        "[outfit]\nparser = \"/nonexistent/garment-parser.manifest.json\"\n",
    );
    assert!(
        said.contains("outfits off") && said.contains("/nonexistent/garment-parser.manifest.json"),
        "{said}"
    );
    assert_eq!(record["outcome"], "ok", "{record}");
    assert_ne!(record["region"], "outfit");
    assert!(record.get("garments").is_none(), "{record}");
    assert_eq!(record["results"].as_array().unwrap().len(), 5);
}

/// "Goes with" on an outfit: the pipeline a scan uses offers what completes it, never more of a
/// category the outfit's garments matched.
#[test]
fn goes_with_on_an_outfit_offers_only_categories_the_outfit_does_not_wear() {
    use kiosk_pipeline::config::{Config, Overrides};
    use kiosk_pipeline::pipeline::{Pipeline, Store};

    let dir = tempfile::tempdir().unwrap();
    let table_path = demo_table(dir.path());
    let config_path = write_config(
        dir.path(),
        &table_path,
        "[outfit]\nmax_garments = 4\n[recommend]\ngender = false\n",
    );
    let config = Config::load(&config_path, &Overrides::default()).unwrap();
    let embedder = kiosk_vision::model::Embedder::load(&repo(TINY)).unwrap();
    let table = embedder.load_table(&table_path).unwrap();
    let session = embedder.session().unwrap();
    let mut pipeline = Pipeline::assemble(&config, session, table, &mut Store::default());
    assert!(pipeline.goes_with().is_empty(), "nothing looked up yet");

    let result = pipeline
        .look_up(&decode_file(&repo(PERSON)).unwrap())
        .unwrap();
    assert!(result.garments.len() >= 2, "{:?}", result.note);
    let worn: Vec<&str> = result
        .garments
        .iter()
        .map(|g| g.results[0].metadata["subCategory"].as_str().unwrap())
        .collect();
    let offered = pipeline.goes_with();
    assert!(!offered.is_empty(), "nothing completes {worn:?}");
    for (id, category) in &offered {
        assert!(
            !worn.contains(&category.as_str()),
            "{id} ({category}) is of a category the outfit wears: {worn:?}"
        );
    }
}
