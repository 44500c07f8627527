//! End-to-end tests of the `fashion-kiosk` binary on a few demo catalogue images: indexing
//! (incremental, bad files skipped), querying, and every bad input giving a one-line error that
//! names the file, a non-zero exit, no panic and no damage to a good table.

use std::path::{Path, PathBuf};
use std::process::Output;

mod common;

use common::repo;

fn int8_manifest() -> PathBuf {
    repo("models/fashion-resnet50-int8.manifest.json")
}

fn run(args: &[&str]) -> Output {
    common::fashion_kiosk_args(args)
        .env("FASHION_KIOSK_LOG", "info")
        .output()
        .expect("binary runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts a clean failure: non-zero exit, no panic, and an `error:` line naming `names`.
fn assert_fails_naming(out: &Output, names: &[&str]) {
    let err = stderr(out);
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    assert!(!err.contains("panicked"), "panic: {err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line: {err}"));
    for name in names {
        assert!(
            line.contains(name),
            "error line does not name {name:?}: {line}"
        );
    }
}

/// Eight demo catalogue images in a fresh folder, with the demo labels.
fn small_catalogue(dir: &Path) -> (PathBuf, Vec<String>) {
    let catalogue = dir.join("catalogue");
    std::fs::create_dir(&catalogue).unwrap();
    let picked = common::demo_sample(8);
    for name in &picked {
        std::fs::copy(repo("demo/catalogue").join(name), catalogue.join(name)).unwrap();
    }
    (catalogue, picked)
}

fn index(catalogue: &Path, out: &Path, manifest: &Path) -> Output {
    index_with(catalogue, out, manifest, &[])
}

fn index_with(catalogue: &Path, out: &Path, manifest: &Path, extra: &[&str]) -> Output {
    let labels = repo("demo/labels.csv");
    let mut args = vec![
        "index",
        "--catalogue",
        catalogue.to_str().unwrap(),
        "--labels",
        labels.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--model",
        manifest.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run(&args)
}

fn query(table: &Path, image: &Path, manifest: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "query",
        "--table",
        table.to_str().unwrap(),
        "--image",
        image.to_str().unwrap(),
        "--model",
        manifest.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run(&args)
}

fn query_json(table: &Path, image: &Path, manifest: &Path) -> serde_json::Value {
    let out = query(table, image, manifest, &["--top", "3", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("query --json prints JSON")
}

#[test]
fn index_skips_bad_files_reindexes_only_changes_and_query_finds_the_item_itself() {
    let dir = tempfile::tempdir().unwrap();
    let (catalogue, picked) = small_catalogue(dir.path());
    // Bad files: text named .jpg, a truncated JPEG, an empty PNG, and a non-image name.
    std::fs::write(catalogue.join("notes.jpg"), "this is not a photo").unwrap();
    let jpeg = std::fs::read(catalogue.join(&picked[0])).unwrap();
    std::fs::write(catalogue.join("truncated.jpg"), &jpeg[..jpeg.len() / 3]).unwrap();
    std::fs::write(catalogue.join("empty.png"), b"").unwrap();
    std::fs::write(catalogue.join("readme.txt"), "ignored").unwrap();
    let table = dir.path().join("table.fkt");

    let out = index(&catalogue, &table, &int8_manifest());
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    for bad in ["notes.jpg", "truncated.jpg", "empty.png"] {
        assert_eq!(
            err.lines()
                .filter(|l| l.contains("skipping") && l.contains(bad))
                .count(),
            1,
            "{bad}: {err}"
        );
    }
    assert!(
        err.contains("8 items (8 embedded, 0 unchanged), 3 skipped, 1 non-image files ignored"),
        "{err}"
    );
    assert!(err.contains("images/s embedded"), "{err}");
    // The faster form for this CPU embedded (the int8 model's fp32 twin without an int8 dot
    // product); with --no-twin the int8 model itself does, and reads either table.
    let fastest =
        kiosk_vision::form::pick(&int8_manifest(), kiosk_vision::form::has_int8_dot_product())
            .unwrap();
    assert!(
        err.contains(&format!("embedding with {}", fastest.manifest.display())),
        "{err}"
    );
    let own_table = dir.path().join("own.fkt");
    let out = index_with(&catalogue, &own_table, &int8_manifest(), &["--no-twin"]);
    assert!(!stderr(&out).contains("embedding with"), "{}", stderr(&out));
    for table in [&table, &own_table] {
        let answer = query_json(table, &catalogue.join(&picked[0]), &int8_manifest());
        assert_eq!(
            answer["results"][0]["id"],
            picked[0].trim_end_matches(".jpg"),
            "{answer}"
        );
    }

    // Each catalogue image finds itself first, with its labels as metadata.
    for name in &picked[..3] {
        let answer = query_json(&table, &catalogue.join(name), &int8_manifest());
        let first = &answer["results"][0];
        assert_eq!(first["id"], name.trim_end_matches(".jpg"), "{answer}");
        assert!(first["score"].as_f64().unwrap() > 0.99, "{answer}");
        assert!(
            first["articleType"].as_str().is_some_and(|s| !s.is_empty()),
            "{answer}"
        );
        assert_eq!(answer["results"].as_array().unwrap().len(), 3);
        for stage in ["decode", "preprocess", "embed", "search", "total"] {
            assert!(
                answer["latency_ms"][stage].as_f64().is_some(),
                "{stage}: {answer}"
            );
        }
    }

    // eval scores the table by its labels; bench times every stage on it.
    let out = run(&[
        "eval",
        "--table",
        table.to_str().unwrap(),
        "--labels",
        repo("demo/labels.csv").to_str().unwrap(),
        "--k",
        "2",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let eval: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(eval["items"], 8);
    for column in eval["precision"].as_array().unwrap() {
        let p = column["precision"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&p) && column["queries"] == 8, "{eval}");
    }
    let out = run(&[
        "bench",
        "--runs",
        "2",
        "--model",
        int8_manifest().to_str().unwrap(),
        "--table",
        table.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = String::from_utf8_lossy(&out.stdout);
    for line in [
        "decode",
        "preprocess",
        "embed fashion-resnet50-int8 (int8, 1 thread) median",
        "search top-5 of 8 items, i8 ",
        "search top-5 of 8 items, i8, every item scored",
        "vector memory per item",
        "peak RSS",
    ] {
        assert!(
            printed.contains(line),
            "bench output lacks {line:?}: {printed}"
        );
    }

    // Unchanged folder (the unreadable files removed, or the table would not be replaced):
    // nothing re-embedded. One image replaced: only it.
    for bad in ["notes.jpg", "truncated.jpg", "empty.png"] {
        std::fs::remove_file(catalogue.join(bad)).unwrap();
    }
    let out = index(&catalogue, &table, &int8_manifest());
    assert!(
        stderr(&out).contains("8 items (0 embedded, 8 unchanged)"),
        "{}",
        stderr(&out)
    );
    std::fs::copy(
        repo("demo/catalogue").join(&picked[1]),
        catalogue.join(&picked[0]),
    )
    .unwrap();
    let out = index(&catalogue, &table, &int8_manifest());
    assert!(
        stderr(&out).contains("8 items (1 embedded, 7 unchanged)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_model_inputs_fail_cleanly_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (catalogue, picked) = small_catalogue(dir.path());
    let image = catalogue.join(&picked[0]);
    let table = dir.path().join("t.fkt");
    let query = |manifest: &Path| query(&table, &image, manifest, &[]);

    // Missing manifest.
    let missing = dir.path().join("missing.manifest.json");
    assert_fails_naming(&query(&missing), &["missing.manifest.json"]);

    // Corrupt manifest (not JSON) and a manifest with a bad field.
    let corrupt = dir.path().join("corrupt.manifest.json");
    std::fs::write(&corrupt, "{ not json").unwrap();
    assert_fails_naming(&query(&corrupt), &["corrupt.manifest.json"]);
    let text = std::fs::read_to_string(int8_manifest()).unwrap();
    let bad_field = dir.path().join("badfield.manifest.json");
    std::fs::write(&bad_field, text.replace("\"NCHW\"", "\"NHWC\"")).unwrap();
    assert_fails_naming(
        &query(&bad_field),
        &["badfield.manifest.json", "input.layout"],
    );

    // Manifest whose model file is missing, or is not the file it describes.
    let manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
    let model_name = manifest["model_file"].as_str().unwrap().to_string();
    let moved = dir.path().join("moved.manifest.json");
    std::fs::write(&moved, &text).unwrap();
    assert_fails_naming(&query(&moved), &[&model_name, "moved.manifest.json"]);
    std::fs::write(dir.path().join(&model_name), b"garbage model bytes").unwrap();
    assert_fails_naming(&query(&moved), &[&model_name, "does not match"]);

    // A corrupt model file whose digest the manifest does match.
    let digest = {
        use sha2::Digest;
        let d = sha2::Sha256::digest(b"garbage model bytes");
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let forged = dir.path().join("forged.manifest.json");
    std::fs::write(
        &forged,
        text.replace(manifest["sha256"].as_str().unwrap(), &digest),
    )
    .unwrap();
    assert_fails_naming(&query(&forged), &["cannot load model", &model_name]);
}

#[test]
fn bad_tables_and_images_fail_cleanly_and_a_good_table_survives() {
    let dir = tempfile::tempdir().unwrap();
    let (catalogue, picked) = small_catalogue(dir.path());
    let table = dir.path().join("good.fkt");
    assert!(index(&catalogue, &table, &int8_manifest()).status.success());
    let good = std::fs::read(&table).unwrap();
    let image = catalogue.join(&picked[0]);
    let query = |table: &Path, image: &Path| query(table, image, &int8_manifest(), &[]);

    // Truncated table, wrong version, missing table.
    let truncated = dir.path().join("truncated.fkt");
    std::fs::write(&truncated, &good[..good.len() / 2]).unwrap();
    assert_fails_naming(&query(&truncated, &image), &["truncated.fkt", "truncated"]);
    let mut versioned = good.clone();
    versioned[8] = 9;
    let wrong_version = dir.path().join("v9.fkt");
    std::fs::write(&wrong_version, versioned).unwrap();
    assert_fails_naming(&query(&wrong_version, &image), &["v9.fkt", "version 9"]);
    assert_fails_naming(&query(&dir.path().join("none.fkt"), &image), &["none.fkt"]);

    // A table from another model: same bytes, other fingerprint in the header.
    let mut foreign = good.clone();
    foreign[24..56].fill(0xab);
    let header_crc = crc32fast::hash(&foreign[..92]);
    foreign[92..96].copy_from_slice(&header_crc.to_le_bytes());
    let other = dir.path().join("other-model.fkt");
    std::fs::write(&other, foreign).unwrap();
    assert_fails_naming(
        &query(&other, &image),
        &[
            "other-model.fkt",
            "fashion-resnet50-int8.manifest.json",
            "rebuild",
        ],
    );

    // A query file that is not an image.
    let text = dir.path().join("list.jpg");
    std::fs::write(&text, "id,score\n").unwrap();
    assert_fails_naming(&query(&table, &text), &["list.jpg"]);

    // Indexing a folder with no usable image fails and leaves the good table as it was.
    let junk = dir.path().join("junk");
    std::fs::create_dir(&junk).unwrap();
    std::fs::write(junk.join("a.jpg"), "nope").unwrap();
    assert_fails_naming(
        &index(&junk, &table, &int8_manifest()),
        &["junk", "good.fkt"],
    );
    assert_eq!(
        std::fs::read(&table).unwrap(),
        good,
        "good table was modified"
    );
    // So does indexing with a missing model.
    assert_fails_naming(
        &index(&catalogue, &table, &dir.path().join("nope.json")),
        &["nope.json"],
    );
    assert_eq!(
        std::fs::read(&table).unwrap(),
        good,
        "good table was modified"
    );
}

#[test]
fn a_table_with_no_items_is_refused_naming_it_by_bench_and_query() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.fkt");
    let fingerprint = kiosk_util::digest::Fingerprint([0; 32]);
    kiosk_table::catalogue::TableBuilder::new(fingerprint, 2048, Vec::new())
        .write(&empty, kiosk_table::catalogue::Element::I8)
        .unwrap();
    let bench = run(&[
        "bench",
        "--runs",
        "1",
        "--model",
        int8_manifest().to_str().unwrap(),
        "--table",
        empty.to_str().unwrap(),
    ]);
    assert_fails_naming(&bench, &["empty.fkt", "holds no items"]);
    let image = repo("demo/catalogue").join(&common::demo_sample(1)[0]);
    assert_fails_naming(
        &query(&empty, &image, &int8_manifest(), &[]),
        &["empty.fkt", "holds no items"],
    );
}

#[test]
fn index_refuses_to_shrink_a_table_by_more_than_a_tenth_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let (catalogue, picked) = small_catalogue(dir.path());
    let table = dir.path().join("live.fkt");
    assert!(index(&catalogue, &table, &int8_manifest()).status.success());
    let good = std::fs::read(&table).unwrap();

    // Two of the eight images gone (an unmounted share, a wrong folder): refused, table unchanged.
    for name in &picked[..2] {
        std::fs::remove_file(catalogue.join(name)).unwrap();
    }
    let gone: Vec<&str> = picked[..2]
        .iter()
        .map(|name| name.trim_end_matches(".jpg"))
        .collect();
    let out = index(&catalogue, &table, &int8_manifest());
    assert_fails_naming(
        &out,
        &[
            "live.fkt",
            "left unchanged",
            "drop 2 of its 8 items",
            gone[0],
            gone[1],
            "--allow-shrink",
        ],
    );
    assert_eq!(std::fs::read(&table).unwrap(), good, "table was modified");

    // Asked for: replaced.
    let out = index_with(&catalogue, &table, &int8_manifest(), &["--allow-shrink"]);
    assert!(
        stderr(&out).contains("wrote")
            && stderr(&out).contains("6 items (0 embedded, 6 unchanged)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn index_refuses_to_replace_a_table_when_images_cannot_be_read_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let (catalogue, _) = small_catalogue(dir.path());
    let table = dir.path().join("live.fkt");
    assert!(index(&catalogue, &table, &int8_manifest()).status.success());
    let good = std::fs::read(&table).unwrap();

    // One image of nine unreadable (more than 1%), though no item would go.
    std::fs::write(catalogue.join("unreadable.jpg"), "not a photo").unwrap();
    let out = index(&catalogue, &table, &int8_manifest());
    assert_fails_naming(
        &out,
        &[
            "live.fkt",
            "left unchanged",
            "drop 0 of its 8 items",
            "1 of the 9 images",
            "could not be read",
            "--allow-shrink",
        ],
    );
    assert_eq!(std::fs::read(&table).unwrap(), good, "table was modified");

    let out = index_with(&catalogue, &table, &int8_manifest(), &["--allow-shrink"]);
    assert!(
        stderr(&out).contains("8 items (0 embedded, 8 unchanged), 1 skipped"),
        "{}",
        stderr(&out)
    );
}
