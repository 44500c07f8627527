//! What counts as a press: a GPIO push button (rppal on a Raspberry Pi, gpiocdev on other Linux
//! boards) and, for development and tests, a line on stdin or a datagram on a Unix socket.
//! SIGUSR1 presses are handled with the other signals in the kiosk.

use std::io::BufRead;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use kiosk_pipeline::config::GpioBackend;

/// A source of presses.
pub trait Trigger: Send {
    /// What it is, for logs and `check`.
    fn describe(&self) -> String;
    /// Blocks until the next press; `Ok(false)` when the source has ended for good.
    fn wait(&mut self) -> Result<bool>;
}

/// Each line on standard input is a press; end of input ends the source.
pub struct StdinTrigger;

impl Trigger for StdinTrigger {
    fn describe(&self) -> String {
        "stdin (each line is a press)".into()
    }

    fn wait(&mut self) -> Result<bool> {
        let mut line = String::new();
        let read = std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read standard input")?;
        Ok(read > 0)
    }
}

/// Each datagram on a Unix socket is a press (`socat - UNIX-SENDTO:PATH`, or any program).
pub struct SocketTrigger {
    socket: UnixDatagram,
    path: PathBuf,
}

impl SocketTrigger {
    /// Binds `path`, replacing a stale socket file left by an earlier run; a socket another
    /// process still listens on (a running kiosk, while `check` runs) is left alone.
    pub fn bind(path: &Path) -> Result<Self> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if meta.file_type().is_socket() {
                if UnixDatagram::unbound()
                    .and_then(|probe| probe.connect(path))
                    .is_ok()
                {
                    bail!(
                        "trigger socket {} is in use (is the kiosk running?)",
                        path.display()
                    );
                }
                std::fs::remove_file(path)
                    .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
            }
        }
        let socket = UnixDatagram::bind(path)
            .with_context(|| format!("cannot bind trigger socket {}", path.display()))?;
        Ok(SocketTrigger {
            socket,
            path: path.to_path_buf(),
        })
    }
}

impl Trigger for SocketTrigger {
    fn describe(&self) -> String {
        format!("Unix datagram socket {}", self.path.display())
    }

    fn wait(&mut self) -> Result<bool> {
        let mut buf = [0u8; 64];
        self.socket
            .recv(&mut buf)
            .with_context(|| format!("cannot read trigger socket {}", self.path.display()))?;
        Ok(true)
    }
}

impl Drop for SocketTrigger {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A push button between a GPIO pin and ground: internal pull-up, a press is a falling edge.
/// The kernel (gpiocdev) or rppal debounces; the kiosk debounces again whatever the source.
pub enum GpioButton {
    Rppal {
        pin: rppal::gpio::InputPin,
        number: u8,
    },
    Cdev {
        request: gpiocdev::Request,
        chip: PathBuf,
        line: u8,
    },
}

impl GpioButton {
    /// Opens `pin` with the chosen backend; `Auto` is rppal on a Raspberry Pi, gpiocdev elsewhere.
    pub fn open(pin: u8, chip: &Path, backend: GpioBackend, debounce: Duration) -> Result<Self> {
        match backend {
            GpioBackend::Rppal => Self::open_rppal(pin, debounce),
            GpioBackend::Gpiocdev => Self::open_cdev(pin, chip, debounce),
            GpioBackend::Auto => match Self::open_rppal(pin, debounce) {
                Ok(button) => Ok(button),
                Err(rppal_err) => Self::open_cdev(pin, chip, debounce).map_err(|cdev_err| {
                    cdev_err.context(format!("rppal: {rppal_err:#}; gpiocdev"))
                }),
            },
        }
    }

    fn open_rppal(number: u8, debounce: Duration) -> Result<Self> {
        let gpio = rppal::gpio::Gpio::new().context("rppal cannot open the GPIO peripheral")?;
        let mut pin = gpio
            .get(number)
            .with_context(|| format!("cannot claim GPIO {number} (BCM)"))?
            .into_input_pullup();
        pin.set_interrupt(rppal::gpio::Trigger::FallingEdge, Some(debounce))
            .with_context(|| format!("cannot watch GPIO {number} for presses"))?;
        Ok(GpioButton::Rppal { pin, number })
    }

    fn open_cdev(line: u8, chip: &Path, debounce: Duration) -> Result<Self> {
        let request = gpiocdev::Request::builder()
            .on_chip(chip)
            .with_consumer("fashion-kiosk")
            .with_line(line as u32)
            .as_input()
            .with_bias(gpiocdev::line::Bias::PullUp)
            .with_edge_detection(gpiocdev::line::EdgeDetection::FallingEdge)
            .with_debounce_period(debounce)
            .request()
            .with_context(|| format!("cannot claim line {line} of {}", chip.display()))?;
        Ok(GpioButton::Cdev {
            request,
            chip: chip.to_path_buf(),
            line,
        })
    }
}

impl Trigger for GpioButton {
    fn describe(&self) -> String {
        match self {
            GpioButton::Rppal { number, .. } => format!("button on GPIO {number} (rppal)"),
            GpioButton::Cdev { chip, line, .. } => {
                format!("button on line {line} of {} (gpiocdev)", chip.display())
            }
        }
    }

    fn wait(&mut self) -> Result<bool> {
        match self {
            GpioButton::Rppal { pin, number } => loop {
                if pin
                    .poll_interrupt(true, None)
                    .with_context(|| format!("GPIO {number}: waiting for a press failed"))?
                    .is_some()
                {
                    return Ok(true);
                }
            },
            GpioButton::Cdev {
                request,
                chip,
                line,
            } => {
                request.read_edge_event().with_context(|| {
                    format!(
                        "line {line} of {}: waiting for a press failed",
                        chip.display()
                    )
                })?;
                Ok(true)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_datagram_is_a_press_and_stale_sockets_are_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trigger.sock");
        drop(UnixDatagram::bind(&path).unwrap()); // a stale socket file from a crashed run
        let mut trigger = SocketTrigger::bind(&path).unwrap();
        let sender = UnixDatagram::unbound().unwrap();
        sender.send_to(b"press", &path).unwrap();
        sender.send_to(b"", &path).unwrap();
        assert!(trigger.wait().unwrap());
        assert!(trigger.wait().unwrap());
        // A second kiosk (or `check`) leaves a live socket alone.
        let err = SocketTrigger::bind(&path)
            .err()
            .expect("the socket is in use");
        assert!(format!("{err:#}").contains("in use"), "{err:#}");
        sender.send_to(b"press", &path).unwrap();
        assert!(trigger.wait().unwrap());
        drop(trigger);
        assert!(!path.exists());
    }

    #[test]
    fn gpio_off_a_pi_names_what_failed() {
        let err = GpioButton::open(
            17,
            Path::new("/nonexistent/gpiochip9"),
            GpioBackend::Auto,
            Duration::from_millis(50),
        )
        .err()
        .expect("no GPIO here");
        let message = format!("{err:#}");
        assert!(message.contains("rppal"), "{message}");
        assert!(message.contains("/nonexistent/gpiochip9"), "{message}");
    }
}
