//! `fashion-kiosk-build` as a user meets it first: its commands listed, and a mistake answered in
//! one line naming what is at fault. (Its crate's own integration test, so that `cargo test`
//! builds the binary the end-to-end tests at the top of the workspace drive too.)

use std::process::Command;

fn build_tool(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fashion-kiosk-build"))
        .args(args)
        .output()
        .expect("the binary runs")
}

#[test]
fn it_lists_its_commands_and_names_a_missing_catalogue_in_one_line() {
    let help = build_tool(&["--help"]);
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for command in ["index", "merge", "trends"] {
        assert!(text.contains(command), "{text}");
    }
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-folder");
    let out = build_tool(&[
        "index",
        "--catalogue",
        missing.to_str().unwrap(),
        "--out",
        dir.path().join("t.fkt").to_str().unwrap(),
        "--model",
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/tiny-model/tiny.manifest.json"
        ),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let error_lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(error_lines.len(), 1, "{err}");
    assert!(error_lines[0].contains("no-such-folder"), "{err}");
}
