//! `fashion-kiosk-uplink` as an operator meets it first: a config it cannot use is one line naming
//! the file or the field. (Its crate's own integration test, so that `cargo test` builds the
//! binary the end-to-end tests at the top of the workspace drive too.)

use std::process::Command;

fn uplink(config: &std::path::Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_fashion-kiosk-uplink"))
        .arg("--config")
        .arg(config)
        .output()
        .expect("the binary runs");
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_missing_config_or_uplink_section_is_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("kiosk.toml");
    let err = uplink(&missing);
    assert!(
        err.starts_with("error:") && err.contains("kiosk.toml"),
        "{err}"
    );
    std::fs::write(
        &missing,
        "[catalogue]\ntable = \"t.fkt\"\n[camera]\nkind = \"folder\"\npath = \"photos\"\n\
         [trigger]\nkind = \"stdin\"\n[display]\nkind = \"simulated\"\nterminal = true\n",
    )
    .unwrap();
    let err = uplink(&missing);
    assert!(err.contains("[uplink]"), "{err}");
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error:")).count(),
        1,
        "{err}"
    );
}
