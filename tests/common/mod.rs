//! What the end-to-end tests share: how to start the `fashion-kiosk` binary, which demo catalogue
//! images they use, and how they wait on a running kiosk and read its scan log.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A path in the source tree.
pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// `n` demo catalogue file names spread evenly over the sorted catalogue.
#[allow(dead_code)] // not every test file samples the catalogue
pub fn demo_sample(n: usize) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(repo("demo/catalogue"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
        .iter()
        .step_by(names.len() / n)
        .take(n)
        .cloned()
        .collect()
}

/// A command for the scanning service's binary. Cross tests run under an emulator (the cargo
/// runner starts the test binaries, but not the processes they spawn):
/// `FASHION_KIOSK_TEST_RUNNER`, e.g. `qemu-aarch64 -cpu cortex-a76 -L /usr/aarch64-linux-gnu`, is
/// put in front of the binary.
pub fn fashion_kiosk() -> Command {
    command(Path::new(env!("CARGO_BIN_EXE_fashion-kiosk")))
}

/// A command for `fashion-kiosk-build` (index, merge, trends), built beside the service's binary
/// by the same `cargo test` (its crate's own tests ask for it).
#[allow(dead_code)] // not every test file builds a catalogue
pub fn fashion_kiosk_build() -> Command {
    command(&sibling("fashion-kiosk-build"))
}

/// A command for `fashion-kiosk-uplink`, built beside the service's binary.
#[allow(dead_code)] // for the uplink's tests
pub fn fashion_kiosk_uplink() -> Command {
    command(&sibling("fashion-kiosk-uplink"))
}

/// The command for `fashion-kiosk ARGS…`, natively and under an emulator: the service's binary,
/// or for what it forwards (`index`, `merge`, `trends`, `uplink`) the binary that has it, called
/// directly (an emulated binary cannot exec another).
pub fn fashion_kiosk_args(args: &[&str]) -> Command {
    let mut command = match args.first().copied() {
        Some(name @ ("index" | "merge" | "trends")) => {
            let mut command = fashion_kiosk_build();
            command.arg(name);
            command
        }
        Some("uplink") => fashion_kiosk_uplink(),
        Some(name) => {
            let mut command = fashion_kiosk();
            command.arg(name);
            command
        }
        None => fashion_kiosk(),
    };
    command.args(args.iter().skip(1));
    command
}

fn sibling(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_fashion-kiosk")).with_file_name(name);
    assert!(
        path.exists(),
        "{} is not built: run the whole workspace's tests (`cargo test` at the top)",
        path.display()
    );
    path
}

fn command(binary: &Path) -> Command {
    let runner = std::env::var("FASHION_KIOSK_TEST_RUNNER").unwrap_or_default();
    let mut words = runner.split_whitespace();
    match words.next() {
        Some(emulator) => {
            let mut command = Command::new(emulator);
            command.args(words).arg(binary);
            command
        }
        None => Command::new(binary),
    }
}

/// Waits until `done`, at most `within`; on timeout fails with what the kiosk wrote to `stderr`.
#[allow(dead_code)] // for the tests that run a kiosk
pub fn wait_for(what: &str, done: impl Fn() -> bool, stderr: &Path, within: Duration) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; the kiosk said:\n{}",
            std::fs::read_to_string(stderr).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The records of a scan log so far (none before it exists).
#[allow(dead_code)] // for the tests that run a kiosk
pub fn log_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
