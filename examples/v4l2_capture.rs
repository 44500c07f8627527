//! Captures from a real V4L2 device with the kiosk's camera code and checks what it got: the
//! size, the content (vivid's 75% colour bars) and that a frame taken after a request is fresh.
//! Run inside a VM with the `vivid` module by `tests/vivid/run-vm.sh`; prints `VIVID-CHECK PASS`.
//!
//! Usage: v4l2_capture [DEVICE]   (default /dev/video0)

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use fashion_kiosk::config::PixelFormatChoice;
use fashion_kiosk::device::camera::{monotonic_now, PixelFormat, V4l2Camera};

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
