//! Colour as the catalogue's studio saw it. Shop light tints what the camera sees (white balance
//! alone costs most of the recall), so the kiosk measures its light with something of known
//! colour: a matte white card held up once at calibration ([`read_card`]: per-channel gains
//! relative to the empty scene's light, followed afterwards by the scene's own drift), or a
//! neutral patch that stays in view and is read on every frame ([`read_patch`]: it follows
//! daylight). [`Correction::gains_for`] picks the gains of one scan; [`correct`] applies them to
//! what is embedded.

use anyhow::{bail, ensure, Result};
use image::{Rgb, RgbImage};
use serde::{Deserialize, Serialize};

use crate::foreground::{self, BackgroundModel, Located};

/// What a matte white card becomes after correction by default: paper reflects about 88% of
/// the light the catalogue's studio white (255) stands for.
pub const DEFAULT_CARD_LEVEL: f32 = 225.0;
/// The least share of the frame a card must cover (an A5 card at arm's length in front of a
/// kiosk camera covers 3–10%).
const MIN_CARD_SHARE: f32 = 0.015;
/// The least share of the card's inner cells that must be its one colour (fingers and a rotated
/// edge take the rest).
const MIN_PLAIN_SHARE: f32 = 0.6;
/// Inner cells within this ratio of the card's median colour, in every channel, are its colour.
const PLAIN_TOLERANCE: f32 = 0.08;
/// A card's or patch's median pixel this bright is clipped (at least half its pixels are): its
/// colour is unknown.
const CLIPPED_LEVEL: f32 = 252.0;
/// A card or patch channel this dark is too noisy to measure by.
const DARK_LEVEL: f32 = 35.0;
/// The largest ratio between a card's brightest and darkest channel: a tinted light stays within
/// it (±18% white balance), a coloured card does not.
const MAX_TINT: f32 = 1.6;

/// What a white card held up in front of the empty scene said about the kiosk's light.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CardReading {
    /// The card's mean colour, as it would be under the empty scene's light.
    pub colour: [f32; 3],
    /// Share of the frame it covered.
    pub share: f32,
    /// Per channel, what brings the card (and with it the catalogue's colours) to the studio's
    /// light, for a frame under the empty scene's light.
    pub gains: [f32; 3],
}

/// Finds the card in `frame` (the empty scene `scene` with a card held up in it, under the same
/// light), checks it (in view, big enough, plain, neither clipped nor dark, neutral) and reads
/// the gains that take it to `level`. Each refusal is one line that says what to do.
pub fn read_card(frame: &RgbImage, scene: &BackgroundModel, level: f32) -> Result<CardReading> {
    let item = match foreground::locate(frame, scene)? {
        Located::Item(item) => item,
        Located::Nothing { .. } => bail!(
            "no card in view: hold a matte white card (A5 or larger) up in front of the camera, \
             facing it (in front of something darker than the card: on a pale wall it does not \
             stand out)"
        ),
    };
    let (cells, w, h) = foreground::cell_means(frame);
    let inner = foreground::eroded(&item.cells, w as usize, h as usize);
    let inside: Vec<usize> = (0..cells.len()).filter(|&i| inner[i]).collect();
    let share = item.coverage;
    ensure!(
        share >= MIN_CARD_SHARE && !inside.is_empty(),
        "the card covers only {:.1}% of the frame: hold it closer (A5 or larger)",
        100.0 * share
    );
    let typical: [f32; 3] = std::array::from_fn(|c| {
        let mut channel: Vec<f32> = inside.iter().map(|&i| cells[i][c]).collect();
        foreground::median_of(&mut channel)
    });
    let plain_cells: Vec<usize> = inside
        .iter()
        .copied()
        .filter(|&i| {
            (0..3).all(|c| (cells[i][c] - typical[c]).abs() <= PLAIN_TOLERANCE * typical[c])
        })
        .collect();
    let plain = plain_cells.len() as f32 / inside.len() as f32;
    ensure!(
        plain >= MIN_PLAIN_SHARE,
        "the card is not plain (only {:.0}% of it is one colour): use a plain matte card, not a \
         printed or glossy one",
        100.0 * plain
    );
    // The median of the plain part's pixels: right as long as under half of them clip.
    let colour = median_colour(frame, &plain_cells, w);
    check_neutral_light("card", colour)?;
    // The card frame's light may have drifted from the empty scene's: take that out.
    let colour: [f32; 3] = std::array::from_fn(|c| colour[c] / item.gains[c]);
    Ok(CardReading {
        colour,
        share,
        gains: colour.map(|v| level / v),
    })
}

/// The per-channel median of the pixels of `cells` (a grid `cells_wide` across).
fn median_colour(frame: &RgbImage, cells: &[usize], cells_wide: u32) -> [f32; 3] {
    let size = foreground::cell_size();
    let pixels: Vec<Rgb<u8>> = cells
        .iter()
        .flat_map(|&i| {
            let (cx, cy) = (i as u32 % cells_wide, i as u32 / cells_wide);
            (0..size * size).map(move |k| (cx * size + k % size, cy * size + k / size))
        })
        .map(|(x, y)| *frame.get_pixel(x, y))
        .collect();
    std::array::from_fn(|c| {
        let mut channel: Vec<f32> = pixels.iter().map(|p| p.0[c] as f32).collect();
        foreground::median_of(&mut channel)
    })
}

/// Refuses a reading that cannot say what the light is: clipped, too dark or coloured.
fn check_neutral_light(what: &str, colour: [f32; 3]) -> Result<()> {
    let [r, g, b] = colour.map(|v| v.round());
    ensure!(
        colour.iter().all(|&v| v < CLIPPED_LEVEL),
        "the {what} is clipped (R G B {r} {g} {b}): too bright for the camera; keep it out of \
         direct light or lock the exposure lower"
    );
    ensure!(
        colour.iter().all(|&v| v >= DARK_LEVEL),
        "the {what} is too dark (R G B {r} {g} {b}): light the scene, or use a white card"
    );
    let brightest = colour.iter().copied().fold(0.0, f32::max);
    let darkest = colour.iter().copied().fold(f32::INFINITY, f32::min);
    ensure!(
        brightest <= MAX_TINT * darkest,
        "the {what} is coloured (R G B {r} {g} {b}): use a white or neutral grey one"
    );
    Ok(())
}

/// A neutral patch that stays in the camera's view, read on every frame.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WhitePatch {
    /// Where it is in the frame: x, y, width, height.
    pub rect: [u32; 4],
    /// Per channel, what it becomes after correction: measured against the card at calibration,
    /// else the card level (a white patch).
    pub level: [f32; 3],
}

/// The patch's colour in `frame`: the per-channel median of its pixels, refused when it is
/// outside the frame, covered (not plain), clipped, too dark or coloured.
pub fn read_patch(frame: &RgbImage, rect: [u32; 4]) -> Result<[f32; 3]> {
    let [x, y, w, h] = rect;
    ensure!(
        w >= 4
            && h >= 4
            && x.checked_add(w).is_some_and(|r| r <= frame.width())
            && y.checked_add(h).is_some_and(|b| b <= frame.height()),
        "the white patch [{x}, {y}, {w}, {h}] is not inside the {}×{} frame",
        frame.width(),
        frame.height()
    );
    let pixels: Vec<Rgb<u8>> = (y..y + h)
        .flat_map(|py| (x..x + w).map(move |px| (px, py)))
        .map(|(px, py)| *frame.get_pixel(px, py))
        .collect();
    let colour: [f32; 3] = std::array::from_fn(|c| {
        let mut channel: Vec<f32> = pixels.iter().map(|p| p.0[c] as f32).collect();
        foreground::median_of(&mut channel)
    });
    let off = pixels
        .iter()
        .filter(|p| (0..3).any(|c| (p.0[c] as f32 - colour[c]).abs() > 0.15 * colour[c] + 6.0))
        .count();
    ensure!(
        off * 5 <= pixels.len(),
        "the white patch is not plain ({}% of it differs): is something in front of it?",
        100 * off / pixels.len()
    );
    check_neutral_light("white patch", colour)?;
    Ok(colour)
}

/// How a kiosk corrects colour: from its calibration and config.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Correction {
    /// Gains from the white card, for a frame under the empty scene's light.
    pub card: Option<[f32; 3]>,
    /// A patch in view, read on every frame; preferred to the card (it follows the light).
    pub patch: Option<WhitePatch>,
}

/// Where one scan's colour correction came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Not corrected.
    None,
    /// The card from calibration, with the frame's drift from the empty scene taken out.
    Card,
    /// The white patch in this frame.
    Patch,
}

/// The gains one scan applied, and where they came from (the scan log records both).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    pub source: Source,
    pub gains: [f32; 3],
    /// Why the patch was not used, when it was configured but could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Applied {
    fn none() -> Self {
        Applied {
            source: Source::None,
            gains: [1.0; 3],
            note: None,
        }
    }
}

impl Correction {
    /// The gains for `frame`, whose light is `drift` times the empty scene's (1 when unknown):
    /// the patch's when it can be read, else the card's with the drift taken out, else none.
    pub fn gains_for(&self, frame: &RgbImage, drift: [f32; 3]) -> Applied {
        let mut note = None;
        if let Some(patch) = &self.patch {
            match read_patch(frame, patch.rect) {
                Ok(colour) => {
                    return Applied {
                        source: Source::Patch,
                        gains: std::array::from_fn(|c| patch.level[c] / colour[c]),
                        note: None,
                    }
                }
                Err(e) => note = Some(format!("{e:#}")),
            }
        }
        match self.card {
            Some(card) => Applied {
                source: Source::Card,
                gains: std::array::from_fn(|c| card[c] / drift[c]),
                note,
            },
            None => Applied {
                note,
                ..Applied::none()
            },
        }
    }

    /// Whether anything corrects colour at all.
    pub fn is_some(&self) -> bool {
        self.card.is_some() || self.patch.is_some()
    }
}

/// Applies per-channel `gains` to every pixel of `image` but pure white (the white around a
/// cut-out item stays the studio's white).
pub fn correct(image: &mut RgbImage, gains: [f32; 3]) {
    if gains == [1.0; 3] {
        return;
    }
    for pixel in image.pixels_mut() {
        if pixel.0 != [255; 3] {
            pixel.0 = gained(pixel.0, gains);
        }
    }
}

/// One colour with per-channel `gains` applied (rounded, clamped to 0–255).
pub fn gained(rgb: [u8; 3], gains: [f32; 3]) -> [u8; 3] {
    std::array::from_fn(|c| (rgb[c] as f32 * gains[c]).round().clamp(0.0, 255.0) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A textured empty scene under `light` (per-channel gain).
    fn scene(light: [f32; 3], seed: u32) -> RgbImage {
        let mut state = seed.max(1);
        RgbImage::from_fn(320, 240, |x, y| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let noise = (state % 5) as f32 - 2.0;
            let base = [
                80.0 + (x / 40 % 2) as f32 * 50.0,
                110.0 + (y / 30 % 2) as f32 * 30.0,
                140.0,
            ];
            Rgb(std::array::from_fn(|c| {
                (base[c] * light[c] + noise).clamp(0.0, 255.0) as u8
            }))
        })
    }

    /// `image` with a card of `colour` (before the light) in the rectangle (x, y, w, h), and a
    /// darker stripe (a finger) across its lower edge.
    fn with_card(
        mut image: RgbImage,
        light: [f32; 3],
        colour: [f32; 3],
        (x0, y0, w, h): (u32, u32, u32, u32),
    ) -> RgbImage {
        for y in y0..y0 + h {
            for x in x0..x0 + w {
                let finger = y > y0 + h - 12 && (x0 + 20..x0 + 32).contains(&x);
                let c = if finger {
                    [200.0, 150.0, 120.0]
                } else {
                    colour
                };
                image.put_pixel(
                    x,
                    y,
                    Rgb(std::array::from_fn(|k| (c[k] * light[k]).min(255.0) as u8)),
                );
            }
        }
        image
    }

    #[test]
    fn a_card_under_tinted_light_gives_the_gains_that_undo_the_tint() {
        let light = [1.1, 1.0, 0.8];
        let empty = BackgroundModel::from_image(scene(light, 1));
        let frame = with_card(scene(light, 2), light, [200.0; 3], (110, 60, 90, 120));
        let card = read_card(&frame, &empty, 200.0).unwrap();
        for c in 0..3 {
            assert!(
                (card.gains[c] * light[c] - 1.0).abs() < 0.03,
                "channel {c}: gains {:?} under light {light:?}",
                card.gains
            );
        }
        assert!((0.10..0.20).contains(&card.share), "{}", card.share);
    }

    #[test]
    fn the_card_frames_own_drift_is_taken_out() {
        // The card frame is 20% brighter than the empty scene (auto exposure): the gains are
        // still those of the empty scene's light.
        let empty = BackgroundModel::from_image(scene([1.0; 3], 1));
        let brighter = [1.2; 3];
        let frame = with_card(scene(brighter, 2), brighter, [180.0; 3], (110, 60, 90, 120));
        let card = read_card(&frame, &empty, 180.0).unwrap();
        for gain in card.gains {
            assert!((gain - 1.0).abs() < 0.03, "{:?}", card.gains);
        }
    }

    #[test]
    fn a_card_that_cannot_say_the_light_is_refused_with_the_reason() {
        let empty = BackgroundModel::from_image(scene([1.0; 3], 1));
        let cases = [
            (scene([1.0; 3], 2), "no card in view"),
            (
                with_card(scene([1.0; 3], 2), [1.0; 3], [230.0; 3], (150, 100, 30, 30)),
                "hold it closer",
            ),
            (
                with_card(scene([1.0; 3], 2), [1.0; 3], [255.0; 3], (110, 60, 90, 120)),
                "clipped",
            ),
            (
                with_card(
                    scene([1.0; 3], 2),
                    [1.0; 3],
                    [220.0, 90.0, 60.0],
                    (110, 60, 90, 120),
                ),
                "coloured",
            ),
        ];
        for (frame, reason) in cases {
            let err = read_card(&frame, &empty, 225.0).unwrap_err();
            assert!(format!("{err:#}").contains(reason), "{reason}: {err:#}");
        }
        // A printed card: stripes of two greys.
        let mut printed = scene([1.0; 3], 2);
        for y in 60..180 {
            for x in 110..200 {
                let v = if (y / 6) % 2 == 0 { 230 } else { 90 };
                printed.put_pixel(x, y, Rgb([v; 3]));
            }
        }
        let err = read_card(&printed, &empty, 225.0).unwrap_err();
        assert!(format!("{err:#}").contains("not plain"), "{err:#}");
    }

    #[test]
    fn the_patch_is_preferred_and_the_card_follows_the_drift_without_it() {
        let mut frame = RgbImage::from_pixel(64, 48, Rgb([90, 100, 110]));
        for y in 4..14 {
            for x in 4..14 {
                frame.put_pixel(x, y, Rgb([200, 160, 125]));
            }
        }
        let patch = WhitePatch {
            rect: [4, 4, 10, 10],
            level: [200.0; 3],
        };
        let correction = Correction {
            card: Some([1.0, 1.2, 2.0]),
            patch: Some(patch),
        };
        let applied = correction.gains_for(&frame, [1.0; 3]);
        assert_eq!(applied.source, Source::Patch);
        assert_eq!(applied.gains, [1.0, 1.25, 1.6]);
        // The patch covered (by a red sleeve): the card, divided by how much brighter the frame
        // is.
        let covered = RgbImage::from_pixel(64, 48, Rgb([200, 60, 40]));
        let applied = correction.gains_for(&covered, [2.0; 3]);
        assert_eq!(applied.source, Source::Card);
        assert_eq!(applied.gains, [0.5, 0.6, 1.0]);
        assert!(applied.note.unwrap().contains("white patch"));
        assert_eq!(
            Correction::default().gains_for(&frame, [2.0; 3]).source,
            Source::None
        );
    }

    #[test]
    fn correction_leaves_the_white_around_the_item_white() {
        let mut image = RgbImage::from_pixel(4, 1, Rgb([255, 255, 255]));
        image.put_pixel(1, 0, Rgb([100, 100, 100]));
        image.put_pixel(2, 0, Rgb([250, 10, 255]));
        correct(&mut image, [0.5, 2.0, 1.1]);
        assert_eq!(image.get_pixel(0, 0).0, [255, 255, 255]);
        assert_eq!(image.get_pixel(1, 0).0, [50, 200, 110]);
        assert_eq!(image.get_pixel(2, 0).0, [125, 20, 255]);
    }
}
