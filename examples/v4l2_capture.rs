//! Captures from a real V4L2 device with the kiosk's camera code and checks what it got: the
//! size, the content (vivid's 75% colour bars), that a frame taken after a request is fresh, and
//! that calibration's control locking holds (vivid's automatic gain).
//! Run inside a VM with the `vivid` module by `tests/vivid/run-vm.sh`; prints `VIVID-CHECK PASS`.
//!
//! Usage: v4l2_capture [DEVICE]   (default /dev/video0)

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use kiosk_pipeline::config::PixelFormatChoice;
use kiosk_service::device::camera::{cid, monotonic_now, Camera, PixelFormat, V4l2Camera};
use kiosk_service::kiosk::lock_controls;

/// vivid's default pattern: eight vertical bars at 75% intensity, left to right.
const BARS: [(&str, [u8; 3]); 8] = [
    ("white", [191, 191, 191]),
    ("yellow", [191, 191, 0]),
    ("cyan", [0, 191, 191]),
    ("green", [0, 191, 0]),
    ("magenta", [191, 0, 191]),
    ("red", [191, 0, 0]),
    ("blue", [0, 0, 191]),
    ("black", [0, 0, 0]),
];

fn check(device: &Path) -> Result<()> {
    let mut camera = V4l2Camera::open(device, 640, 480, PixelFormatChoice::Yuyv, 2)
        .with_context(|| format!("opening {}", device.display()))?;
    let (format, width, height) = camera.format();
    println!("negotiated {format:?} {width}x{height}");
    ensure!(format == PixelFormat::Yuyv, "format {format:?}");
    ensure!((width, height) == (640, 480), "size {width}x{height}");

    let first = camera.fresh_frame()?;
    ensure!(
        first.image.dimensions() == (640, 480),
        "frame is {:?}",
        first.image.dimensions()
    );
    for (i, (name, want)) in BARS.iter().enumerate() {
        let x = (i as u32 * 2 + 1) * 640 / 16;
        let got = first.image.get_pixel(x, 300).0;
        let close = got
            .iter()
            .zip(want)
            .all(|(g, w)| (*g as i32 - *w as i32).abs() <= 24);
        println!("bar {i} {name:<8} at x={x}: {got:?} (expected ~{want:?})");
        ensure!(close, "bar {i} should be {name}");
    }

    // Let the driver fill both buffers with stale frames, then ask for a fresh one.
    std::thread::sleep(Duration::from_millis(600));
    let requested = monotonic_now();
    let second = camera.fresh_frame()?;
    let stamp = second
        .timestamp
        .context("vivid gives monotonic timestamps")?;
    println!(
        "request at {:.3} s, frame {} stamped {:.3} s (previous frame {})",
        requested.as_secs_f64(),
        second.sequence,
        stamp.as_secs_f64(),
        first.sequence
    );
    ensure!(stamp >= requested, "the frame predates the request");
    // The two frames that waited in the buffers are first + 1 and first + 2.
    ensure!(
        second.sequence >= first.sequence + 3,
        "sequence {} → {}: a stale buffered frame was returned",
        first.sequence,
        second.sequence
    );
    check_controls(&mut camera)
}

/// Calibration's control locking against a real driver: vivid offers automatic gain, under which
/// its gain changes every second. Locked, the gain holds the value it had settled on; the
/// settings re-applied on a fresh open hold too.
fn check_controls(camera: &mut V4l2Camera) -> Result<()> {
    let offered = camera.controls()?;
    let names: Vec<String> = offered
        .iter()
        .map(|c| format!("{} = {}", c.name, c.value))
        .collect();
    println!("controls offered: {}", names.join(", "));
    ensure!(
        offered.iter().any(|c| c.id == cid::AUTOGAIN) && offered.iter().any(|c| c.id == cid::GAIN),
        "vivid offers automatic gain and gain"
    );
    let locked = lock_controls(camera, Duration::from_millis(1500))?;
    let gain = |camera: &mut V4l2Camera| -> Result<i64> {
        let controls = camera.controls()?;
        Ok(controls
            .iter()
            .find(|c| c.id == cid::GAIN)
            .context("gain")?
            .value)
    };
    let set = locked
        .iter()
        .find(|c| c.id == cid::GAIN)
        .context("gain locked")?
        .value;
    ensure!(
        locked.iter().any(|c| c.id == cid::AUTOGAIN && c.value == 0),
        "automatic gain turned off: {locked:?}"
    );
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(1100));
        let now = gain(camera)?;
        println!("gain locked at {set}, reads {now}");
        ensure!(now == set, "the locked gain moved from {set} to {now}");
    }
    // Back to automatic: the gain moves again (vivid's automatic gain follows the clock).
    let automatic = kiosk_service::device::camera::automatic(&camera.controls()?);
    camera.set_controls(&automatic)?;
    let first = gain(camera)?;
    std::thread::sleep(Duration::from_millis(2100));
    let later = gain(camera)?;
    println!("automatic gain: {first} then {later}");
    ensure!(first != later, "automatic gain did not move");
    // As the kiosk restores a calibration on (re)open.
    camera.set_controls(&locked)?;
    std::thread::sleep(Duration::from_millis(1100));
    ensure!(gain(camera)? == set, "restored gain did not hold");
    Ok(())
}

fn main() -> ExitCode {
    let device = PathBuf::from(std::env::args().nth(1).unwrap_or("/dev/video0".into()));
    match check(&device) {
        Ok(()) => {
            println!("VIVID-CHECK PASS");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("VIVID-CHECK FAIL: {e:#}");
            ExitCode::FAILURE
        }
    }
}
