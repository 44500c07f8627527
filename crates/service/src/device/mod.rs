//! The kiosk's hardware behind small traits — [`Camera`], [`Trigger`], [`Display`] — each with a
//! real driver for the Pi and a simulated one. Only this module touches `/dev`.

pub mod camera;
pub mod display;
pub mod trigger;

use anyhow::Result;

pub use camera::Camera;
pub use display::{Display, Screen};
pub use trigger::Trigger;

use kiosk_pipeline::config::{CameraConfig, DisplayConfig, TriggerConfig};

/// Opens the configured camera.
pub fn open_camera(config: &CameraConfig) -> Result<Box<dyn Camera>> {
    Ok(match config {
        CameraConfig::V4l2 {
            device,
            width,
            height,
            format,
            buffers,
        } => Box::new(camera::V4l2Camera::open(
            device, *width, *height, *format, *buffers,
        )?),
        CameraConfig::Folder { path, controls } => Box::new(camera::FolderCamera::open(
            path,
            controls.then(camera::SimulatedControls::default),
        )?),
    })
}

/// Opens the configured trigger; `None` for SIGUSR1-only.
pub fn open_trigger(
    config: &TriggerConfig,
    debounce: std::time::Duration,
) -> Result<Option<Box<dyn Trigger>>> {
    Ok(match config {
        TriggerConfig::Gpio { pin, chip, backend } => Some(Box::new(trigger::GpioButton::open(
            *pin, chip, *backend, debounce,
        )?)),
        TriggerConfig::Stdin => Some(Box::new(trigger::StdinTrigger)),
        TriggerConfig::Socket { path } => Some(Box::new(trigger::SocketTrigger::bind(path)?)),
        TriggerConfig::Signal => None,
    })
}

/// Opens the configured display; `None` for a headless kiosk.
pub fn open_display(config: &DisplayConfig) -> Result<Option<Box<dyn Display>>> {
    Ok(match config {
        DisplayConfig::Ssd1306 { bus, address } => {
            Some(Box::new(display::open_oled(bus, *address)?))
        }
        DisplayConfig::Simulated {
            screens,
            scale,
            terminal,
        } => Some(Box::new(display::SimulatedDisplay::new(
            screens.as_deref(),
            *scale,
            *terminal,
        )?)),
        DisplayConfig::None => None,
    })
}
