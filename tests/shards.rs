//! A catalogue built in shards (`index --shard I/N` into Parquet parts, then `merge`) is the
//! table one `index` of the whole folder makes, byte for byte; the shard comes from the cluster
//! engine's variables; a re-run shard re-embeds nothing unchanged; a file list limits a shard.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

mod common;

use common::repo;
use kiosk_table::catalogue::Table;

/// The stand-in embedder: the same code path as the fashion model, in milliseconds.
const TINY: &str = "tests/fixtures/tiny-model/tiny.manifest.json";

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn fashion_kiosk(args: &[&str]) -> Command {
    let mut command = common::fashion_kiosk_args(args);
    command
        .env("FASHION_KIOSK_LOG", "info")
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX");
    command
}

fn succeeds(command: &mut Command) -> String {
    let out = command.output().unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    err
}

/// 30 demo catalogue images and one truncated JPEG, with the demo labels.
fn catalogue(dir: &Path) -> PathBuf {
    let catalogue = dir.join("catalogue");
    std::fs::create_dir(&catalogue).unwrap();
    for name in common::demo_sample(30) {
        std::fs::copy(repo("demo/catalogue").join(&name), catalogue.join(&name)).unwrap();
    }
    std::fs::write(catalogue.join("cut.jpg"), [0xff, 0xd8, 0xff, 0xe0]).unwrap();
    catalogue
}

fn index_args<'a>(catalogue: &'a Path, labels: &'a Path, tiny: &'a Path) -> Vec<&'a str> {
    vec![
        "index",
        "--catalogue",
        catalogue.to_str().unwrap(),
        "--labels",
        labels.to_str().unwrap(),
        "--model",
        tiny.to_str().unwrap(),
    ]
}

#[test]
fn shards_merged_equal_one_index_of_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    let catalogue = catalogue(dir.path());
    let (labels, tiny) = (repo("demo/labels.csv"), repo(TINY));
    let args = index_args(&catalogue, &labels, &tiny);
    let whole = dir.path().join("whole.fkt");
    succeeds(fashion_kiosk(&args).args(["--out", whole.to_str().unwrap()]));

    let part = |i: usize| dir.path().join(format!("part-{i}.parquet"));
    // Shard 0 given, shard 1 from a Slurm array (tasks 1-4), shard 2 from a Kubernetes
    // Indexed Job, shard 3 given.
    succeeds(fashion_kiosk(&args).args(["--shard", "0/4", "--out", part(0).to_str().unwrap()]));
    let err = succeeds(
        fashion_kiosk(&args)
            .args(["--shard", "auto", "--out", part(1).to_str().unwrap()])
            .env("SLURM_ARRAY_TASK_ID", "2")
            .env("SLURM_ARRAY_TASK_MIN", "1")
            .env("SLURM_ARRAY_TASK_COUNT", "4"),
    );
    assert!(err.contains("shard 1/4"), "{err}");
    let err = succeeds(
        fashion_kiosk(&args)
            .args(["--shard", "auto/4", "--out", part(2).to_str().unwrap()])
            .env("JOB_COMPLETION_INDEX", "2"),
    );
    assert!(err.contains("shard 2/4"), "{err}");
    succeeds(fashion_kiosk(&args).args(["--shard", "3/4", "--out", part(3).to_str().unwrap()]));

    let parts: Vec<String> = (0..4)
        .map(|i| part(i).to_str().unwrap().to_string())
        .collect();
    let merged = dir.path().join("merged.fkt");
    let mut merge = vec!["merge", "--out", merged.to_str().unwrap()];
    merge.extend(parts.iter().map(String::as_str));
    let err = succeeds(&mut fashion_kiosk(&merge));
    assert!(
        err.contains("30 items from 4 parts, 1 images skipped by the shards"),
        "{err}"
    );
    assert!(err.contains("cut.jpg"), "{err}");
    assert!(
        std::fs::read(&merged).unwrap() == std::fs::read(&whole).unwrap(),
        "the merged table differs from the single index"
    );

    // Merged with cells (as a catalogue past --approximate-from is): the same items and vectors,
    // searched approximately, each item finding what an exact search finds first.
    let approximate = dir.path().join("approximate.fkt");
    let mut merge = vec![
        "merge",
        "--approximate-from",
        "30",
        "--out",
        approximate.to_str().unwrap(),
    ];
    merge.extend(parts.iter().map(String::as_str));
    let err = succeeds(&mut fashion_kiosk(&merge));
    assert!(
        err.contains("approximate search: 30 items in 11 cells"),
        "{err}"
    );
    let (exact, approximate) = (
        Table::load(&whole).unwrap(),
        Table::load(&approximate).unwrap(),
    );
    assert_eq!(
        (exact.cell_count(), approximate.cell_count()),
        (None, Some(11))
    );
    for index in 0..exact.len() {
        assert_eq!(
            exact.item(index).to_item(),
            approximate.item(index).to_item()
        );
        let vector = exact.vector(index).unwrap();
        assert_eq!(vector, approximate.vector(index).unwrap());
        assert_eq!(
            approximate.nearest(&vector, 1, None).unwrap(),
            exact.nearest(&vector, 1, None).unwrap(),
            "item {index}"
        );
    }

    // A shard re-run on an unchanged folder re-embeds nothing.
    let err = succeeds(fashion_kiosk(&args).args(["--shard", "3/4", "--out", &parts[3]]));
    let line = err.lines().find(|l| l.contains("wrote")).unwrap();
    assert!(line.contains("(0 embedded,"), "{line}");

    // Without one shard the merge is refused, naming what is missing; the table is untouched.
    let out = fashion_kiosk(&[
        "merge",
        "--out",
        merged.to_str().unwrap(),
        &parts[0],
        &parts[1],
        &parts[3],
    ])
    .output()
    .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("error: 1 of the 4 shards are missing: 2"),
        "{}",
        stderr(&out)
    );
    assert!(std::fs::read(&merged).unwrap() == std::fs::read(&whole).unwrap());

    // A shard writes a part, never a table.
    let out = fashion_kiosk(&args)
        .args(["--shard", "0/4", "--out", whole.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains(".parquet"), "{}", stderr(&out));

    // Outside an engine `auto` says what to give, before any model is read.
    let out = fashion_kiosk(&[
        "index",
        "--catalogue",
        catalogue.to_str().unwrap(),
        "--model",
        "no-such-model.manifest.json",
        "--shard",
        "auto",
        "--out",
        &parts[0],
    ])
    .output()
    .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("error: --shard auto: neither SLURM_ARRAY_TASK_ID"),
        "{err}"
    );
}

#[test]
fn a_file_list_from_stdin_limits_what_is_embedded() {
    let dir = tempfile::tempdir().unwrap();
    let catalogue = catalogue(dir.path());
    let (labels, tiny) = (repo("demo/labels.csv"), repo(TINY));
    let mut names: Vec<String> = common::demo_sample(30).into_iter().step_by(3).collect();
    let part = dir.path().join("listed.parquet");
    let mut child = fashion_kiosk(&index_args(&catalogue, &labels, &tiny))
        .args(["--files-from", "-", "--out", part.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut list = child.stdin.take().unwrap();
        // Names as `find` prints them, a repeat, a missing file and a file outside the folder.
        for name in &names {
            writeln!(list, "{}", catalogue.join(name).display()).unwrap();
        }
        writeln!(list, "{}\ngone.jpg\n../escape.jpg\n", names[0]).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!("{} items ({} embedded", names.len(), names.len())),
        "{err}"
    );
    assert!(err.contains("2 skipped"), "{err}");

    let merged = dir.path().join("listed.fkt");
    succeeds(&mut fashion_kiosk(&[
        "merge",
        part.to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
        "--element",
        "f32",
    ]));
    let table = kiosk_table::catalogue::Table::load(&merged).unwrap();
    let mut sources: Vec<String> = table.items().iter().map(|i| i.source.to_string()).collect();
    sources.sort();
    names.sort();
    assert_eq!(sources, names);
}
