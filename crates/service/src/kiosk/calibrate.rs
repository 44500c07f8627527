//! Calibrating a fixed camera in person, for the running kiosk (SIGUSR2) and for
//! `fashion-kiosk calibrate`: let the camera's automatic exposure and white balance settle and
//! lock them, capture the empty scene, then (optionally) the white card.

use std::time::Duration;

use anyhow::{Context, Result};
use image::RgbImage;

use super::core::{HOLD_CARD, STEP_AWAY};
use crate::device;
use crate::device::camera::{self, Camera};
use kiosk_pipeline::config::Config;
use kiosk_vision::calibration::{Calibration, ControlSetting};

/// How long a camera's automatic exposure and white balance get to settle before calibration
/// locks them.
pub const SETTLE: Duration = Duration::from_secs(2);

/// Hands the camera's automatic modes back, lets them settle on the scene for `settle`, and locks
/// them where they settled; returns what was locked (nothing for a camera without controls).
pub fn lock_controls(camera: &mut dyn Camera, settle: Duration) -> Result<Vec<ControlSetting>> {
    let offered = camera.controls()?;
    if offered.is_empty() {
        tracing::info!(
            "{} offers no exposure or white-balance controls: calibrating with its own settings",
            camera.describe()
        );
        return Ok(Vec::new());
    }
    camera.set_controls(&camera::automatic(&offered))?;
    // The camera's own automatic modes run while it streams, whether or not frames are taken.
    std::thread::sleep(settle);
    let locked = camera::locked(&camera.controls()?);
    camera.set_controls(&locked)?;
    tracing::info!(
        "camera controls locked: {}",
        locked
            .iter()
            .map(|c| format!("{} = {}", c.name, c.value))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(locked)
}

/// Captures `frames` frames of the empty scene from `camera` (a bad frame is taken again).
pub fn capture_empty_scene(camera: &mut dyn Camera, frames: u32) -> Result<Vec<RgbImage>> {
    (0..frames)
        .map(|_| camera::capture_retrying(camera))
        .collect::<Result<Vec<_>, _>>()
        .context("capturing the empty scene")
}

/// Calibrates the configured camera in person, telling `prompt` what to do and when: step out
/// of view (3 s), the controls settle and lock, the empty scene is captured; with `card`, hold the
/// white card up (5 s) and it is read. Refused (nothing saved) with the reason when a step fails.
pub fn calibrate_camera(
    config: &Config,
    frames: u32,
    card: bool,
    mut prompt: impl FnMut(&str),
) -> Result<Calibration> {
    let mut camera = device::open_camera(&config.camera).map_err(|e| {
        if format!("{e:#}").contains("busy") {
            e.context(
                "the camera is in use: if the kiosk is running, recalibrate through it with \
                 `sudo systemctl kill -s USR2 fashion-kiosk`",
            )
        } else {
            e
        }
    })?;
    let mut countdown = |what: &str, wait: Duration| {
        for left in (1..=wait.as_secs()).rev() {
            prompt(&format!("{what}: {left} s"));
            std::thread::sleep(Duration::from_secs(1));
        }
    };
    countdown("Step out of the camera's view", STEP_AWAY);
    let controls = lock_controls(camera.as_mut(), SETTLE)?;
    let empty = capture_empty_scene(camera.as_mut(), frames)?;
    let card = if card {
        countdown(
            "Hold a matte white card (A5 or larger) up in front of the camera, facing it",
            HOLD_CARD,
        );
        Some(camera::capture_retrying(camera.as_mut()).context("capturing the white card")?)
    } else {
        None
    };
    Calibration::from_frames(&empty, card.as_ref(), &config.scene.colour(), controls)
}
