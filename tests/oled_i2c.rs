//! Byte-level test of the SSD1306 path: records every I2C write the driver makes for a results
//! screen, replays them into a model of the controller's display RAM, and checks that RAM
//! against the framebuffer the shared renderer produces.

use std::convert::Infallible;

use embedded_hal::i2c::{ErrorType, I2c, Operation};
use kiosk_service::device::display::{Canvas, Oled, Screen};
use kiosk_service::device::Display;

/// An I2C bus that records writes and answers reads with zeros.
#[derive(Default)]
struct RecordingBus {
    writes: Vec<(u8, Vec<u8>)>,
}

impl ErrorType for RecordingBus {
    type Error = Infallible;
}

impl I2c for RecordingBus {
    fn transaction(
        &mut self,
        address: u8,
        operations: &mut [Operation<'_>],
    ) -> Result<(), Infallible> {
        for op in operations {
            match op {
                Operation::Write(bytes) => self.writes.push((address, bytes.to_vec())),
                Operation::Read(buf) => buf.fill(0),
            }
        }
        Ok(())
    }
}

/// The SSD1306 as the datasheet describes it: a command stream (control byte 0x00) that sets
/// addressing, and a data stream (control byte 0x40) written into 8 pages × 128 columns of RAM.
struct Controller {
    ram: Vec<u8>,
    columns: (usize, usize),
    pages: (usize, usize),
    column: usize,
    page: usize,
    horizontal: bool,
    on: bool,
    commands: Vec<u8>,
}

impl Controller {
    fn new() -> Self {
        Controller {
            ram: vec![0; 1024],
            columns: (0, 127),
            pages: (0, 7),
            column: 0,
            page: 0,
            horizontal: false,
            on: false,
            commands: Vec::new(),
        }
    }

    /// Bytes of arguments that follow each multi-byte command.
    fn arguments(command: u8) -> usize {
        match command {
            0x20 | 0x81 | 0x8d | 0xa8 | 0xd3 | 0xd5 | 0xd9 | 0xda | 0xdb => 1,
            0x21 | 0x22 | 0xa3 => 2,
            0x29 | 0x2a => 5,
            0x26 | 0x27 => 6,
            _ => 0,
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        let (control, payload) = bytes.split_first().expect("empty I2C write");
        match control {
            0x00 => {
                let mut at = 0;
                while at < payload.len() {
                    let command = payload[at];
                    let n = Self::arguments(command);
                    let args = &payload[at + 1..at + 1 + n];
                    self.command(command, args);
                    at += 1 + n;
                }
            }
            0x40 => {
                assert!(
                    self.horizontal,
                    "data sent before horizontal addressing was set"
                );
                for &byte in payload {
                    self.ram[self.page * 128 + self.column] = byte;
                    self.column += 1;
                    if self.column > self.columns.1 {
                        self.column = self.columns.0;
                        self.page = if self.page >= self.pages.1 {
                            self.pages.0
                        } else {
                            self.page + 1
                        };
                    }
                }
            }
            other => panic!("unknown control byte {other:#04x}"),
        }
    }

    fn command(&mut self, command: u8, args: &[u8]) {
        self.commands.push(command);
        match command {
            0x20 => self.horizontal = args[0] == 0x00,
            0x21 => {
                self.columns = (args[0] as usize, args[1] as usize);
                self.column = self.columns.0;
            }
            0x22 => {
                self.pages = (args[0] as usize, args[1] as usize);
                self.page = self.pages.0;
            }
            0xaf => self.on = true,
            0xae => self.on = false,
            _ => {}
        }
    }
}

fn results() -> Screen {
    Screen::Results {
        items: vec![
            ("15970".into(), 0.934),
            ("39386".into(), 0.712),
            ("59263".into(), 0.705),
        ],
    }
}

#[test]
fn results_screen_reaches_the_oled_ram_byte_for_byte() {
    let mut oled = Oled::new(RecordingBus::default(), 0x3c, "test OLED".into()).unwrap();
    oled.show(&results()).unwrap();
    let bus = oled.release();

    assert!(bus.writes.iter().all(|(address, _)| *address == 0x3c));
    let mut controller = Controller::new();
    for (_, bytes) in &bus.writes {
        controller.write(bytes);
    }
    assert!(controller.on, "display never switched on");
    // Rotate0 on the usual modules: segment remap (0xA1) and COM scan from the bottom (0xC8), so
    // RAM column 0 is the left edge and page 0 the top.
    assert!(controller.commands.contains(&0xa1) && controller.commands.contains(&0xc8));

    let expected = Canvas::of(&results()).to_ssd1306_pages();
    let lit = expected.iter().map(|b| b.count_ones()).sum::<u32>();
    assert!(lit > 300, "results screen lights {lit} pixels");
    let data_bytes: usize = bus
        .writes
        .iter()
        .filter(|(_, w)| w[0] == 0x40)
        .map(|(_, w)| w.len() - 1)
        .sum();
    assert_eq!(data_bytes, 1024, "a full frame is 8 pages × 128 columns");
    for (i, (got, want)) in controller.ram.iter().zip(&expected).enumerate() {
        assert_eq!(got, want, "page {} column {}", i / 128, i % 128);
    }
}

#[test]
fn a_new_screen_replaces_every_byte_of_the_previous_one() {
    let mut oled = Oled::new(RecordingBus::default(), 0x3d, "test OLED".into()).unwrap();
    oled.show(&results()).unwrap();
    let idle = Screen::Idle { items: 9583 };
    oled.show(&idle).unwrap();
    let bus = oled.release();
    assert!(bus.writes.iter().all(|(address, _)| *address == 0x3d));
    let mut controller = Controller::new();
    for (_, bytes) in &bus.writes {
        controller.write(bytes);
    }
    assert_eq!(controller.ram, Canvas::of(&idle).to_ssd1306_pages());
    assert_ne!(controller.ram, Canvas::of(&results()).to_ssd1306_pages());
}

#[test]
fn a_controller_reset_by_a_power_glitch_lights_up_again_with_the_next_screen() {
    // The writes of setting up and showing the first screen (the driver is deterministic)…
    let mut oled = Oled::new(RecordingBus::default(), 0x3c, "test OLED".into()).unwrap();
    oled.show(&results()).unwrap();
    let first = oled.release().writes.len();
    // …then a second screen, which alone reaches a controller that lost power in between:
    // display off, addressing back to its reset state.
    let mut oled = Oled::new(RecordingBus::default(), 0x3c, "test OLED".into()).unwrap();
    oled.show(&results()).unwrap();
    let idle = Screen::Idle { items: 9583 };
    oled.show(&idle).unwrap();
    let bus = oled.release();
    let mut controller = Controller::new();
    for (_, bytes) in &bus.writes[first..] {
        controller.write(bytes);
    }
    assert!(
        controller.on,
        "the reset display was never switched back on"
    );
    assert_eq!(controller.ram, Canvas::of(&idle).to_ssd1306_pages());
}

#[test]
fn the_goes_with_screen_reaches_the_oled_ram_byte_for_byte() {
    let goes_with = Screen::GoesWith {
        items: vec![
            ("21370".into(), "Bottomwear".into()),
            ("9204".into(), "Shoes".into()),
            ("1855".into(), "Watches".into()),
        ],
    };
    let mut oled = Oled::new(RecordingBus::default(), 0x3c, "test OLED".into()).unwrap();
    oled.show(&results()).unwrap();
    oled.show(&goes_with).unwrap();
    let bus = oled.release();
    let mut controller = Controller::new();
    for (_, bytes) in &bus.writes {
        controller.write(bytes);
    }
    let expected = Canvas::of(&goes_with).to_ssd1306_pages();
    assert!(expected.iter().map(|b| b.count_ones()).sum::<u32>() > 300);
    for (i, (got, want)) in controller.ram.iter().zip(&expected).enumerate() {
        assert_eq!(got, want, "page {} column {}", i / 128, i % 128);
    }
    assert_ne!(controller.ram, Canvas::of(&results()).to_ssd1306_pages());
}

#[test]
fn the_outfit_screen_reaches_the_oled_ram_byte_for_byte() {
    let ids = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect();
    let outfit = Screen::Outfit {
        garments: vec![
            ("Coat".into(), ids(&["17151", "15020"])),
            ("Top".into(), ids(&["10658", "13218", "13219"])),
            ("Legs".into(), ids(&["12214"])),
            ("Shoes".into(), ids(&["17029", "17736"])),
        ],
    };
    let mut oled = Oled::new(RecordingBus::default(), 0x3c, "test OLED".into()).unwrap();
    oled.show(&results()).unwrap();
    oled.show(&outfit).unwrap();
    let bus = oled.release();
    let mut controller = Controller::new();
    for (_, bytes) in &bus.writes {
        controller.write(bytes);
    }
    let expected = Canvas::of(&outfit).to_ssd1306_pages();
    assert!(expected.iter().map(|b| b.count_ones()).sum::<u32>() > 400);
    for (i, (got, want)) in controller.ram.iter().zip(&expected).enumerate() {
        assert_eq!(got, want, "page {} column {}", i / 128, i % 128);
    }
}
