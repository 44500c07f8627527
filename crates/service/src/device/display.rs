//! What the shopper sees: a [`Screen`] value, one pure function that renders it onto any
//! 128×64 monochrome `DrawTarget`, and the displays that show it — the SSD1306 OLED over I2C, and a
//! simulated one that writes every screen as a PNG and/or draws it in the terminal.

use std::convert::Infallible;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use embedded_graphics::mono_font::ascii::{
    FONT_10X20, FONT_6X10, FONT_6X13, FONT_8X13_BOLD, FONT_9X18_BOLD,
};
use embedded_graphics::mono_font::{MonoFont, MonoTextStyle};
use embedded_graphics::pixelcolor::BinaryColor;
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::{Line, PrimitiveStyle, Rectangle};
use embedded_graphics::text::{Alignment, Baseline, Text, TextStyleBuilder};
use ssd1306::mode::BufferedGraphicsMode;
use ssd1306::prelude::*;
use ssd1306::{I2CDisplayInterface, Ssd1306};

use kiosk_util::files::write_atomically;

/// Width of the OLED in pixels.
pub const WIDTH: u32 = 128;
/// Height of the OLED in pixels.
pub const HEIGHT: u32 = 64;

/// What the display shows.
#[derive(Debug, Clone, PartialEq)]
pub enum Screen {
    /// Waiting for a press.
    Idle { items: usize },
    /// A scan is running; `tenths` of a second since the press.
    Scanning { tenths: u32 },
    /// The best items (id, score), best first; the first 3 are shown.
    Results { items: Vec<(String, f32)> },
    /// What goes with the scanned item: (id, its category), best first; the first 3 are shown.
    GoesWith { items: Vec<(String, String)> },
    /// An outfit, garment by garment top to bottom: (its label, its best ids); the first 4
    /// garments are shown, each with the ids that fit its row.
    Outfit {
        garments: Vec<(String, Vec<String>)>,
    },
    /// Something the shopper or staff should know (a fault, a reload, a calibration), with its
    /// title in an inverted bar.
    Message { title: String, detail: String },
    /// The frame matches the empty scene: nobody is holding anything up.
    NothingToScan,
    /// Calibrating: a step and the seconds left before its capture (0: capturing now).
    Calibrating { step: CalibrationStep, seconds: u32 },
    /// The service has stopped.
    Stopped,
}

/// What a calibration asks of the person at the kiosk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CalibrationStep {
    /// Step out of view: the empty scene is captured.
    EmptyScene,
    /// Hold a matte white card up in front of the camera.
    Card,
}

/// A device that shows screens.
pub trait Display: Send {
    /// What it is, for logs and `check`.
    fn describe(&self) -> String;
    /// Replaces what is shown.
    fn show(&mut self, screen: &Screen) -> Result<()>;
}

fn style(
    font: &'static MonoFont<'static>,
    color: BinaryColor,
) -> MonoTextStyle<'static, BinaryColor> {
    MonoTextStyle::new(font, color)
}

fn centred<D>(
    target: &mut D,
    text: &str,
    y: i32,
    font: &'static MonoFont<'static>,
) -> Result<(), D::Error>
where
    D: DrawTarget<Color = BinaryColor>,
{
    let text_style = TextStyleBuilder::new()
        .alignment(Alignment::Center)
        .baseline(Baseline::Top)
        .build();
    Text::with_text_style(
        text,
        Point::new(WIDTH as i32 / 2, y),
        style(font, BinaryColor::On),
        text_style,
    )
    .draw(target)?;
    Ok(())
}

/// Garment rows of an outfit screen, and the 8×13 characters of ids each row holds (right of a
/// five-character label).
const OUTFIT_ROWS: usize = 4;
const OUTFIT_ID_CHARS: usize = 11;

/// The first `ids` that fit in `max` characters, space-separated (the first one clipped if it
/// alone is too long).
fn ids_that_fit(ids: &[String], max: usize) -> String {
    let mut line = String::new();
    for id in ids {
        if line.is_empty() {
            line = clip(id, max);
        } else if line.len() + 1 + id.len() <= max {
            line.push(' ');
            line.push_str(id);
        } else {
            break;
        }
    }
    line
}

/// Keeps at most `max` characters (ids and messages are ASCII; others count as one each).
fn clip(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

/// Splits `text` into lines of at most `width` characters at spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let word = clip(word, width);
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(&word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// Draws `screen` onto `target` (128×64, lit = `On`), clearing it first. The same pixels reach the
/// OLED and the PNGs.
pub fn render<D>(screen: &Screen, target: &mut D) -> Result<(), D::Error>
where
    D: DrawTarget<Color = BinaryColor>,
{
    target.clear(BinaryColor::Off)?;
    match screen {
        Screen::Idle { items } => {
            centred(target, "Press to", 6, &FONT_10X20)?;
            centred(target, "scan", 26, &FONT_10X20)?;
            centred(target, &format!("{items} items"), 52, &FONT_6X10)?;
        }
        Screen::Scanning { tenths } => {
            centred(target, "Scanning", 8, &FONT_10X20)?;
            let elapsed = format!("{}.{} s", tenths / 10, tenths % 10);
            centred(target, &elapsed, 36, &FONT_10X20)?;
        }
        // Three rows of 10×20 ids, readable from a step away; scores small on the right.
        Screen::Results { items } => draw_rows(
            target,
            items
                .iter()
                .take(3)
                .map(|(id, score)| (clip(id, 9), format!("{score:.2}"))),
            RESULT_ROWS,
        )?,
        Screen::GoesWith { items } => {
            // A title over a rule (not an inverted bar: this is no fault), then per row the
            // category small on the left and the id in bold on the right.
            Text::with_baseline(
                "Goes with",
                Point::new(0, 0),
                style(&FONT_6X10, BinaryColor::On),
                Baseline::Top,
            )
            .draw(target)?;
            Line::new(Point::new(0, 11), Point::new(WIDTH as i32 - 1, 11))
                .into_styled(PrimitiveStyle::with_stroke(BinaryColor::On, 1))
                .draw(target)?;
            let rows = items
                .iter()
                .take(3)
                .map(|(id, category)| (clip(category, 8), clip(id, 9)));
            draw_rows(target, rows, GOES_WITH_ROWS)?;
        }
        // A row of 16 pixels per garment: its label small on the left, its best ids in bold on
        // the right (as many as fit, best first), readable at a glance in the mirror.
        Screen::Outfit { garments } => draw_rows(
            target,
            garments
                .iter()
                .take(OUTFIT_ROWS)
                .map(|(label, ids)| (clip(label, 5), ids_that_fit(ids, OUTFIT_ID_CHARS))),
            OUTFIT_ROW_LAYOUT,
        )?,
        Screen::NothingToScan => {
            centred(target, "Nothing to", 6, &FONT_10X20)?;
            centred(target, "scan", 26, &FONT_10X20)?;
            centred(target, "Hold the item up", 52, &FONT_6X10)?;
        }
        Screen::Calibrating { step, seconds } => render_calibrating(target, *step, *seconds)?,
        Screen::Message { title, detail } => render_message(target, title, detail)?,
        Screen::Stopped => {
            centred(target, "Out of", 6, &FONT_10X20)?;
            centred(target, "service", 30, &FONT_10X20)?;
        }
    }
    Ok(())
}

/// Where a list screen's rows go: from `top`, one every `pitch` pixels, each a text on the left
/// and one right-aligned, each in its font and lowered by its offset.
struct RowLayout {
    top: i32,
    pitch: i32,
    left: (&'static MonoFont<'static>, i32),
    right: (&'static MonoFont<'static>, i32),
}

const RESULT_ROWS: RowLayout = RowLayout {
    top: 0,
    pitch: 22,
    left: (&FONT_10X20, 0),
    right: (&FONT_6X13, 5),
};
const GOES_WITH_ROWS: RowLayout = RowLayout {
    top: 15,
    pitch: 16,
    left: (&FONT_6X10, 2),
    right: (&FONT_8X13_BOLD, 0),
};
const OUTFIT_ROW_LAYOUT: RowLayout = RowLayout {
    top: 0,
    pitch: 16,
    left: (&FONT_6X10, 3),
    right: (&FONT_8X13_BOLD, 1),
};

fn draw_rows<D>(
    target: &mut D,
    rows: impl Iterator<Item = (String, String)>,
    layout: RowLayout,
) -> Result<(), D::Error>
where
    D: DrawTarget<Color = BinaryColor>,
{
    let right_aligned = TextStyleBuilder::new()
        .alignment(Alignment::Right)
        .baseline(Baseline::Top)
        .build();
    for (row, (left, right)) in rows.enumerate() {
        let y = layout.top + row as i32 * layout.pitch;
        Text::with_baseline(
            &left,
            Point::new(0, y + layout.left.1),
            style(layout.left.0, BinaryColor::On),
            Baseline::Top,
        )
        .draw(target)?;
        Text::with_text_style(
            &right,
            Point::new(WIDTH as i32 - 1, y + layout.right.1),
            style(layout.right.0, BinaryColor::On),
            right_aligned,
        )
        .draw(target)?;
    }
    Ok(())
}

fn render_calibrating<D>(
    target: &mut D,
    step: CalibrationStep,
    seconds: u32,
) -> Result<(), D::Error>
where
    D: DrawTarget<Color = BinaryColor>,
{
    let (title, first, second) = match step {
        CalibrationStep::EmptyScene => ("Calibrating", "Step out of view", "of the camera"),
        CalibrationStep::Card => ("White card", "Hold it up, facing", "the camera"),
    };
    centred(target, title, 4, &FONT_10X20)?;
    centred(target, first, 28, &FONT_6X10)?;
    centred(target, second, 39, &FONT_6X10)?;
    let when = match seconds {
        0 => "capturing".to_string(),
        s => format!("in {s} s"),
    };
    centred(target, &when, 52, &FONT_6X10)
}

/// An inverted title bar over the detail: a message is told apart from results at a glance.
fn render_message<D>(target: &mut D, title: &str, detail: &str) -> Result<(), D::Error>
where
    D: DrawTarget<Color = BinaryColor>,
{
    Rectangle::new(Point::zero(), Size::new(WIDTH, 19))
        .into_styled(PrimitiveStyle::with_fill(BinaryColor::On))
        .draw(target)?;
    Text::with_baseline(
        &clip(title, 14),
        Point::new(1, 0),
        style(&FONT_9X18_BOLD, BinaryColor::Off),
        Baseline::Top,
    )
    .draw(target)?;
    for (i, line) in wrap(detail, 21).iter().take(4).enumerate() {
        Text::with_baseline(
            line,
            Point::new(1, 22 + i as i32 * 10),
            style(&FONT_6X10, BinaryColor::On),
            Baseline::Top,
        )
        .draw(target)?;
    }
    Ok(())
}

/// A 128×64 in-memory framebuffer: what the PNGs, the terminal and the tests render into.
#[derive(Clone, PartialEq, Eq)]
pub struct Canvas {
    lit: Vec<bool>,
}

impl Default for Canvas {
    fn default() -> Self {
        Canvas {
            lit: vec![false; (WIDTH * HEIGHT) as usize],
        }
    }
}

impl std::fmt::Debug for Canvas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Canvas({} lit)", self.lit_count())
    }
}

impl Canvas {
    /// The canvas with `screen` rendered on it.
    pub fn of(screen: &Screen) -> Self {
        let mut canvas = Canvas::default();
        match render(screen, &mut canvas) {
            Ok(()) => canvas,
            Err(never) => match never {},
        }
    }

    /// Whether the pixel at (x, y) is lit; false outside.
    pub fn is_lit(&self, x: u32, y: u32) -> bool {
        x < WIDTH && y < HEIGHT && self.lit[(y * WIDTH + x) as usize]
    }

    /// How many pixels are lit.
    pub fn lit_count(&self) -> usize {
        self.lit.iter().filter(|&&p| p).count()
    }

    /// The framebuffer as the SSD1306 holds it: 8 pages of 128 bytes, bit n of a byte = row n of
    /// the page (least significant bit on top).
    pub fn to_ssd1306_pages(&self) -> Vec<u8> {
        let mut bytes = vec![0u8; (WIDTH * HEIGHT / 8) as usize];
        for y in 0..HEIGHT {
            for x in 0..WIDTH {
                if self.is_lit(x, y) {
                    bytes[((y / 8) * WIDTH + x) as usize] |= 1 << (y % 8);
                }
            }
        }
        bytes
    }

    /// A grey image, lit pixels white, each pixel `scale`×`scale`.
    pub fn to_image(&self, scale: u32) -> image::GrayImage {
        image::GrayImage::from_fn(WIDTH * scale, HEIGHT * scale, |x, y| {
            image::Luma([if self.is_lit(x / scale, y / scale) {
                255
            } else {
                0
            }])
        })
    }

    /// Reads back a PNG written by [`Canvas::to_image`] (any scale); `None` if its size is not a
    /// multiple of 128×64.
    pub fn from_image(image: &image::GrayImage) -> Option<Self> {
        let scale = image.width() / WIDTH;
        if scale == 0 || image.width() != WIDTH * scale || image.height() != HEIGHT * scale {
            return None;
        }
        let mut canvas = Canvas::default();
        for y in 0..HEIGHT {
            for x in 0..WIDTH {
                canvas.lit[(y * WIDTH + x) as usize] =
                    image.get_pixel(x * scale, y * scale)[0] >= 128;
            }
        }
        Some(canvas)
    }

    /// The canvas as text, two pixel rows per line with half blocks, framed.
    pub fn to_terminal(&self) -> String {
        let mut out = String::with_capacity(((WIDTH + 3) * (HEIGHT / 2 + 2) * 3) as usize);
        out.push('┌');
        out.extend(std::iter::repeat_n('─', WIDTH as usize));
        out.push_str("┐\n");
        for y in (0..HEIGHT).step_by(2) {
            out.push('│');
            for x in 0..WIDTH {
                out.push(match (self.is_lit(x, y), self.is_lit(x, y + 1)) {
                    (true, true) => '█',
                    (true, false) => '▀',
                    (false, true) => '▄',
                    (false, false) => ' ',
                });
            }
            out.push_str("│\n");
        }
        out.push('└');
        out.extend(std::iter::repeat_n('─', WIDTH as usize));
        out.push_str("┘\n");
        out
    }
}

impl OriginDimensions for Canvas {
    fn size(&self) -> Size {
        Size::new(WIDTH, HEIGHT)
    }
}

impl DrawTarget for Canvas {
    type Color = BinaryColor;
    type Error = Infallible;

    fn draw_iter<I>(&mut self, pixels: I) -> Result<(), Infallible>
    where
        I: IntoIterator<Item = Pixel<BinaryColor>>,
    {
        for Pixel(point, color) in pixels {
            if (0..WIDTH as i32).contains(&point.x) && (0..HEIGHT as i32).contains(&point.y) {
                self.lit[(point.y as u32 * WIDTH + point.x as u32) as usize] = color.is_on();
            }
        }
        Ok(())
    }
}

/// The development display: each screen as `screen-NNNNN.png` in a folder and/or drawn on the
/// terminal (standard output).
pub struct SimulatedDisplay {
    screens: Option<PathBuf>,
    scale: u32,
    terminal: bool,
    shown: u32,
}

impl SimulatedDisplay {
    /// Prepares the folder (created if needed; earlier `screen-*.png` files removed so that the
    /// folder holds this run's screens only).
    pub fn new(screens: Option<&Path>, scale: u32, terminal: bool) -> Result<Self> {
        if let Some(dir) = screens {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create screens folder {}", dir.display()))?;
            for entry in std::fs::read_dir(dir)
                .with_context(|| format!("cannot read screens folder {}", dir.display()))?
            {
                let path = entry?.path();
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if name.starts_with("screen-") && name.ends_with(".png") {
                    std::fs::remove_file(&path)
                        .with_context(|| format!("cannot remove old screen {}", path.display()))?;
                }
            }
        }
        Ok(SimulatedDisplay {
            screens: screens.map(Path::to_path_buf),
            scale,
            terminal,
            shown: 0,
        })
    }
}

impl Display for SimulatedDisplay {
    fn describe(&self) -> String {
        match (&self.screens, self.terminal) {
            (Some(dir), true) => {
                format!("simulated display: PNGs in {} and terminal", dir.display())
            }
            (Some(dir), false) => format!("simulated display: PNGs in {}", dir.display()),
            (None, _) => "simulated display: terminal".into(),
        }
    }

    fn show(&mut self, screen: &Screen) -> Result<()> {
        let canvas = Canvas::of(screen);
        self.shown += 1;
        if let Some(dir) = &self.screens {
            let path = dir.join(format!("screen-{:05}.png", self.shown));
            let mut png = Vec::new();
            canvas
                .to_image(self.scale)
                .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                .with_context(|| format!("cannot encode {}", path.display()))?;
            write_atomically(&path, &png)?;
        }
        if self.terminal {
            let mut out = std::io::stdout().lock();
            out.write_all(canvas.to_terminal().as_bytes())
                .and_then(|()| out.flush())
                .context("cannot draw on the terminal")?;
        }
        Ok(())
    }
}

/// An SSD1306 128×64 OLED on any I2C bus (the Pi's `/dev/i2c-N`, or a recording bus in tests).
pub struct Oled<I2C> {
    display: Ssd1306<I2CInterface<I2C>, DisplaySize128x64, BufferedGraphicsMode<DisplaySize128x64>>,
    name: String,
}

impl<I2C: embedded_hal::i2c::I2c> Oled<I2C> {
    /// Initialises the controller at `address` on `i2c`; fails if it does not answer.
    pub fn new(i2c: I2C, address: u8, name: String) -> Result<Self> {
        let interface = I2CDisplayInterface::new_custom_address(i2c, address);
        let mut display = Ssd1306::new(interface, DisplaySize128x64, DisplayRotation::Rotate0)
            .into_buffered_graphics_mode();
        display
            .init()
            .map_err(|e| anyhow!("{name}: SSD1306 does not answer ({e:?})"))?;
        Ok(Oled { display, name })
    }

    /// Gives the bus back (tests read what was written).
    pub fn release(self) -> I2C {
        self.display.release().release()
    }
}

impl<I2C: embedded_hal::i2c::I2c + Send> Display for Oled<I2C> {
    fn describe(&self) -> String {
        self.name.clone()
    }

    /// Sends the controller its set-up again (a few dozen bytes), then the whole frame: a module
    /// reset by a power glitch answers on the bus but stays dark until re-initialised, and no
    /// error would ever say so.
    fn show(&mut self, screen: &Screen) -> Result<()> {
        self.display
            .init()
            .map_err(|e| anyhow!("{}: SSD1306 does not answer ({e:?})", self.name))?;
        self.display.clear_buffer();
        render(screen, &mut self.display).map_err(|e| anyhow!("{}: {e:?}", self.name))?;
        self.display
            .flush()
            .map_err(|e| anyhow!("{}: write failed ({e:?})", self.name))
    }
}

/// Opens the OLED on the Linux I2C bus `bus` at `address`.
pub fn open_oled(bus: &Path, address: u8) -> Result<Oled<linux_embedded_hal::I2cdev>> {
    let i2c = linux_embedded_hal::I2cdev::new(bus)
        .with_context(|| format!("cannot open I2C bus {}", bus.display()))?;
    Oled::new(
        i2c,
        address,
        format!("SSD1306 at {address:#04x} on {}", bus.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn results() -> Screen {
        Screen::Results {
            items: vec![
                ("15970".into(), 0.93),
                ("39386".into(), 0.71),
                ("59263".into(), 0.705),
            ],
        }
    }

    #[test]
    fn screens_differ_and_fit() {
        let screens = [
            Screen::Idle { items: 300 },
            Screen::Scanning { tenths: 12 },
            results(),
            Screen::GoesWith {
                items: vec![
                    ("15970".into(), "Bottomwear".into()),
                    ("39386".into(), "Shoes".into()),
                    ("59263".into(), "Watches".into()),
                ],
            },
            Screen::Message {
                title: "Camera offline".into(),
                detail: "cannot open /dev/video0: No such file or directory".into(),
            },
            Screen::NothingToScan,
            Screen::Calibrating {
                step: CalibrationStep::Card,
                seconds: 4,
            },
            Screen::Stopped,
            outfit(),
        ];
        let canvases: Vec<Canvas> = screens.iter().map(Canvas::of).collect();
        for (i, a) in canvases.iter().enumerate() {
            assert!(a.lit_count() > 100, "{:?} draws almost nothing", screens[i]);
            for b in &canvases[i + 1..] {
                assert_ne!(a, b);
            }
        }
        // The results' top row holds the first id in 10×20 glyphs, the third row the third id.
        let ids = Canvas::of(&results());
        let lit_in = |y0: u32, y1: u32| {
            (y0..y1)
                .flat_map(|y| (0..50).map(move |x| (x, y)))
                .filter(|&(x, y)| ids.is_lit(x, y))
                .count()
        };
        assert!(lit_in(0, 20) > 50 && lit_in(22, 42) > 50 && lit_in(44, 64) > 50);
    }

    fn outfit() -> Screen {
        let ids = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect();
        Screen::Outfit {
            garments: vec![
                ("Top".into(), ids(&["15970", "39386", "59263"])),
                ("Legs".into(), ids(&["21470", "12214"])),
                ("Shoes".into(), ids(&["17029"])),
            ],
        }
    }

    #[test]
    fn an_outfit_shows_one_row_per_garment_with_the_ids_that_fit() {
        assert_eq!(
            ids_that_fit(&["15970".into(), "39386".into(), "59263".into()], 11),
            "15970 39386"
        );
        assert_eq!(
            ids_that_fit(&["123456789012".into(), "1".into()], 11),
            "12345678901"
        );
        assert_eq!(ids_that_fit(&[], 11), "");
        let canvas = Canvas::of(&outfit());
        let lit = |x0: u32, x1: u32, y0: u32, y1: u32| {
            (y0..y1)
                .flat_map(|y| (x0..x1).map(move |x| (x, y)))
                .filter(|&(x, y)| canvas.is_lit(x, y))
                .count()
        };
        // Three garments: labels on the left and ids on the right of rows 0–2; row 3 is empty.
        for row in 0..3 {
            let y = row * 16;
            assert!(lit(0, 30, y, y + 16) > 10, "label of row {row}");
            assert!(lit(88, 128, y, y + 16) > 30, "ids of row {row}");
        }
        assert_eq!(lit(0, 128, 48, 64), 0);
        // Two ids on the first row, one on the third: the third row is dark left of 88.
        assert!(lit(40, 80, 0, 16) > 30);
        assert_eq!(lit(40, 80, 32, 48), 0);
    }

    #[test]
    fn scores_and_ids_change_pixels() {
        let mut other = results();
        if let Screen::Results { items } = &mut other {
            items[2].1 = 0.69;
        }
        assert_ne!(Canvas::of(&results()), Canvas::of(&other));
    }

    #[test]
    fn png_round_trip_at_any_scale() {
        let canvas = Canvas::of(&results());
        for scale in [1, 3] {
            let image = canvas.to_image(scale);
            assert_eq!(image.dimensions(), (128 * scale, 64 * scale));
            assert_eq!(Canvas::from_image(&image).unwrap(), canvas);
        }
    }

    #[test]
    fn page_layout_puts_row_bits_lsb_first() {
        let mut canvas = Canvas::default();
        canvas
            .draw_iter([
                Pixel(Point::new(0, 0), BinaryColor::On),
                Pixel(Point::new(5, 9), BinaryColor::On),
                Pixel(Point::new(127, 63), BinaryColor::On),
            ])
            .unwrap();
        let pages = canvas.to_ssd1306_pages();
        assert_eq!(pages[0], 0b0000_0001);
        assert_eq!(pages[128 + 5], 0b0000_0010);
        assert_eq!(pages[7 * 128 + 127], 0b1000_0000);
        assert_eq!(pages.iter().map(|b| b.count_ones()).sum::<u32>(), 3);
    }

    #[test]
    fn long_text_is_wrapped_and_clipped() {
        assert_eq!(
            wrap("cannot open /dev/video0: No such file", 21),
            vec!["cannot open", "/dev/video0: No such", "file"]
        );
        assert_eq!(clip("1234567890123", 9), "123456789");
    }
}
