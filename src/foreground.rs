//! Finding the item in a fixed camera's frame. The kiosk camera does not move, so the empty scene
//! (the reference, see `calibrate`) tells the item apart: the frame is compared with the reference
//! after matching their exposure and white balance, the difference is thresholded above the
//! sensor's noise, cleaned up, and the item's bounding box (with a margin) is cut out and placed,
//! masked, on a white square — like the catalogue's studio shots — before it is embedded.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use image::{Rgb, RgbImage};

use crate::catalogue::write_atomically;

/// The mask is computed on a grid this many pixels apart (noise averages out, and it is fast).
const CELL: u32 = 4;
/// Below this share of the frame, nothing is in front of the camera.
const MIN_COVERAGE: f32 = 0.01;

/// What the frame holds.
#[derive(Debug)]
pub enum Foreground {
    /// The item on white, square, and where it was in the frame (x, y, width, height).
    Item {
        image: RgbImage,
        bbox: (u32, u32, u32, u32),
        coverage: f32,
    },
    /// Nothing differs from the empty scene enough to be an item.
    Nothing { coverage: f32 },
}

/// Mean of each CELL×CELL block per channel.
fn cells(image: &RgbImage) -> (Vec<[f32; 3]>, u32, u32) {
    let (w, h) = (image.width() / CELL, image.height() / CELL);
    let mut out = vec![[0f32; 3]; (w * h) as usize];
    for cy in 0..h {
        for cx in 0..w {
            let mut sum = [0f32; 3];
            for y in cy * CELL..(cy + 1) * CELL {
                for x in cx * CELL..(cx + 1) * CELL {
                    let p = image.get_pixel(x, y).0;
                    for c in 0..3 {
                        sum[c] += p[c] as f32;
                    }
                }
            }
            out[(cy * w + cx) as usize] = sum.map(|s| s / (CELL * CELL) as f32);
        }
    }
    (out, w, h)
}

fn median(values: &mut [f32]) -> f32 {
    let mid = values.len() / 2;
    *values.select_nth_unstable_by(mid, f32::total_cmp).1
}

/// One pass of a 3×3 binary filter: erosion (`all`) or dilation (any).
fn morph(mask: &[bool], w: usize, h: usize, all: bool) -> Vec<bool> {
    let mut out = vec![false; mask.len()];
    for y in 0..h {
        for x in 0..w {
            let mut hit = all;
            for dy in -1i32..=1 {
                for dx in -1i32..=1 {
                    let (nx, ny) = (x as i32 + dx, y as i32 + dy);
                    let v = nx >= 0
                        && ny >= 0
                        && (nx as usize) < w
                        && (ny as usize) < h
                        && mask[ny as usize * w + nx as usize];
                    if all {
                        hit &= v;
                    } else {
                        hit |= v;
                    }
                }
            }
            out[y * w + x] = hit;
        }
    }
    out
}

/// Connected components (8-neighbour) of `mask`: a label per cell (0 = none) and each one's size.
fn components(mask: &[bool], w: usize, h: usize) -> (Vec<u32>, Vec<usize>) {
    let mut labels = vec![0u32; mask.len()];
    let mut sizes = vec![0usize];
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || labels[start] != 0 {
            continue;
        }
        let label = sizes.len() as u32;
        sizes.push(0);
        labels[start] = label;
        stack.push(start);
        while let Some(i) = stack.pop() {
            sizes[label as usize] += 1;
            let (x, y) = ((i % w) as i32, (i / w) as i32);
            for dy in -1..=1 {
                for dx in -1..=1 {
                    let (nx, ny) = (x + dx, y + dy);
                    if nx < 0 || ny < 0 || nx as usize >= w || ny as usize >= h {
                        continue;
                    }
                    let j = ny as usize * w + nx as usize;
                    if mask[j] && labels[j] == 0 {
                        labels[j] = label;
                        stack.push(j);
                    }
                }
            }
        }
    }
    (labels, sizes)
}

/// Each component's cell box (x0, y0, x1, y1), inclusive, by label.
fn bounding_boxes(labels: &[u32], count: usize, w: usize) -> Vec<(usize, usize, usize, usize)> {
    let mut boxes = vec![(usize::MAX, usize::MAX, 0, 0); count];
    for (i, &l) in labels.iter().enumerate().filter(|(_, &l)| l != 0) {
        let (x, y) = (i % w, i / w);
        let b = &mut boxes[l as usize];
        *b = (b.0.min(x), b.1.min(y), b.2.max(x), b.3.max(y));
    }
    boxes
}

/// The largest channel difference between a frame pixel and the gain-matched reference pixel.
fn pixel_difference(frame: Rgb<u8>, reference: Rgb<u8>, gains: &[f32; 3]) -> f32 {
    (0..3)
        .map(|c| (frame.0[c] as f32 - gains[c] * reference.0[c] as f32).abs())
        .fold(0.0, f32::max)
}

/// The difference a single pixel of the background reaches by noise alone: from a sample of
/// pixels outside the item, the median plus six spreads.
fn pixel_noise_threshold(
    frame: &RgbImage,
    reference: &RgbImage,
    gains: &[f32; 3],
    item: &[bool],
    cells_wide: u32,
) -> f32 {
    let mut sample = Vec::new();
    for y in (0..frame.height() - frame.height() % CELL).step_by(3) {
        for x in (0..frame.width() - frame.width() % CELL).step_by(3) {
            if !item[((y / CELL) * cells_wide + x / CELL) as usize] {
                sample.push(pixel_difference(
                    *frame.get_pixel(x, y),
                    *reference.get_pixel(x, y),
                    gains,
                ));
            }
        }
    }
    if sample.is_empty() {
        return 30.0;
    }
    let typical = median(&mut sample);
    let mut deviations: Vec<f32> = sample.iter().map(|d| (d - typical).abs()).collect();
    let spread = 1.4826 * median(&mut deviations);
    (typical + 6.0 * spread).max(typical + 14.0)
}

/// Separates the item in `frame` from the empty scene `reference` (same camera, same size).
pub fn isolate(frame: &RgbImage, reference: &RgbImage) -> Result<Foreground> {
    ensure!(
        frame.dimensions() == reference.dimensions(),
        "the frame is {}×{} but the reference is {}×{}: recalibrate (`fashion-kiosk calibrate`)",
        frame.width(),
        frame.height(),
        reference.width(),
        reference.height()
    );
    ensure!(
        frame.width() >= 16 * CELL && frame.height() >= 16 * CELL,
        "the frame is too small ({}×{})",
        frame.width(),
        frame.height()
    );
    let (f, w, h) = cells(frame);
    let (r, _, _) = cells(reference);
    let n = f.len();

    // Exposure and white-balance drift: the background is most of the frame, so the median
    // ratio per channel is the gain between the two.
    let mut gains = [1f32; 3];
    for (c, gain) in gains.iter_mut().enumerate() {
        let mut ratios: Vec<f32> = (0..n).map(|i| (f[i][c] + 4.0) / (r[i][c] + 4.0)).collect();
        *gain = median(&mut ratios);
    }
    let difference: Vec<f32> = (0..n)
        .map(|i| {
            (0..3)
                .map(|c| (f[i][c] - gains[c] * r[i][c]).abs())
                .fold(0.0, f32::max)
        })
        .collect();
    // Above the noise: the median difference is background noise; its spread sets the bar.
    let mut sorted = difference.clone();
    let typical = median(&mut sorted);
    let mut deviations: Vec<f32> = difference.iter().map(|d| (d - typical).abs()).collect();
    let spread = 1.4826 * median(&mut deviations);
    let threshold = (typical + 6.0 * spread).max(typical + 14.0);
    let mask: Vec<bool> = difference.iter().map(|&d| d > threshold).collect();

    // Close small gaps inside the item, then drop specks.
    let (wu, hu) = (w as usize, h as usize);
    let closed = morph(&morph(&mask, wu, hu, false), wu, hu, true);
    let opened = morph(&morph(&closed, wu, hu, true), wu, hu, false);
    let (labels, sizes) = components(&opened, wu, hu);
    let largest = sizes.iter().copied().max().unwrap_or(0);
    let coverage = largest as f32 / n as f32;
    if coverage < MIN_COVERAGE {
        return Ok(Foreground::Nothing { coverage });
    }
    // The item: the largest part, and any part at least a fifth its size close to it (a pair of
    // shoes); a far-off part is a change in the scene (a moved poster), not the item.
    let boxes = bounding_boxes(&labels, sizes.len(), wu);
    let main = (1..sizes.len())
        .max_by_key(|&l| sizes[l])
        .expect("coverage > 0");
    let reach = wu.max(hu) / 10;
    let near = |l: usize| {
        let (a, b) = (boxes[l], boxes[main]);
        a.0 <= b.2 + reach && b.0 <= a.2 + reach && a.1 <= b.3 + reach && b.1 <= a.3 + reach
    };
    let keep: Vec<bool> = (0..sizes.len())
        .map(|l| l == main || (l > 0 && sizes[l] * 5 >= largest && near(l)))
        .collect();
    let item: Vec<bool> = labels.iter().map(|&l| l != 0 && keep[l as usize]).collect();
    let (mut x0, mut y0, mut x1, mut y1) = (wu, hu, 0, 0);
    for (i, _) in item.iter().enumerate().filter(|(_, &m)| m) {
        let (x, y) = (i % wu, i / wu);
        x0 = x0.min(x);
        y0 = y0.min(y);
        x1 = x1.max(x + 1);
        y1 = y1.max(y + 1);
    }
    let coverage = item.iter().filter(|&&m| m).count() as f32 / n as f32;

    // Back to full resolution, with a margin of 6% of the box each side.
    let (bw, bh) = ((x1 - x0) as u32 * CELL, (y1 - y0) as u32 * CELL);
    let margin_x = bw * 6 / 100;
    let margin_y = bh * 6 / 100;
    let left = (x0 as u32 * CELL).saturating_sub(margin_x);
    let top = (y0 as u32 * CELL).saturating_sub(margin_y);
    let right = (x1 as u32 * CELL + margin_x).min(frame.width());
    let bottom = (y1 as u32 * CELL + margin_y).min(frame.height());
    let (cw, ch) = (right - left, bottom - top);

    // Pixel by pixel at the item's edge (cells are coarse): inside cells are the item, cells
    // next to its edge keep only the pixels that differ from the scene by more than the
    // pixels' own noise.
    let pixel_threshold = pixel_noise_threshold(frame, reference, &gains, &item, w);
    let grown = morph(&item, wu, hu, false);
    let inner = morph(&item, wu, hu, true);
    let side = cw.max(ch);
    let (ox, oy) = ((side - cw) / 2, (side - ch) / 2);
    let mut square = RgbImage::from_pixel(side, side, Rgb([255, 255, 255]));
    for y in 0..ch {
        for x in 0..cw {
            let (fx, fy) = (left + x, top + y);
            let cell = ((fy / CELL).min(h - 1) * w + (fx / CELL).min(w - 1)) as usize;
            let pixel = *frame.get_pixel(fx, fy);
            let keep = inner[cell]
                || (grown[cell]
                    && pixel_difference(pixel, *reference.get_pixel(fx, fy), &gains)
                        > pixel_threshold);
            if keep {
                square.put_pixel(ox + x, oy + y, pixel);
            }
        }
    }
    Ok(Foreground::Item {
        image: square,
        bbox: (left, top, cw, ch),
        coverage,
    })
}

/// Averages several frames of the empty scene into one reference (noise drops by √n).
pub fn average(frames: &[RgbImage]) -> Result<RgbImage> {
    let first = frames
        .first()
        .ok_or_else(|| anyhow::anyhow!("no frames to average"))?;
    ensure!(
        frames.iter().all(|f| f.dimensions() == first.dimensions()),
        "the camera changed its frame size while calibrating"
    );
    let mut sum = vec![0u32; first.as_raw().len()];
    for frame in frames {
        for (s, &p) in sum.iter_mut().zip(frame.as_raw()) {
            *s += p as u32;
        }
    }
    let n = frames.len() as u32;
    let pixels = sum.iter().map(|&s| ((s + n / 2) / n) as u8).collect();
    Ok(RgbImage::from_raw(first.width(), first.height(), pixels).expect("same size as the frames"))
}

/// Writes an image (the reference, a cut-out) as a PNG, atomically.
pub fn save_png(path: &Path, image: &RgbImage) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut png = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .with_context(|| format!("cannot encode {}", path.display()))?;
    write_atomically(path, &png)
}

/// Reads the reference at `path`: `None` if there is none yet (not calibrated).
pub fn load_reference(path: &Path) -> Result<Option<RgbImage>> {
    if !path.exists() {
        return Ok(None);
    }
    crate::preprocess::decode_file(path)
        .map(Some)
        .with_context(|| format!("bad empty-scene reference {} (recalibrate)", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A textured scene with deterministic pseudo-random noise (seed 0: none).
    fn scene(seed: u32, gain: [f32; 3]) -> RgbImage {
        let mut state = seed.wrapping_mul(2654435761).max(1);
        RgbImage::from_fn(320, 240, |x, y| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let noise = if seed == 0 {
                0.0
            } else {
                (state % 9) as f32 - 4.0
            };
            let base = [
                90.0 + (x / 40 % 2) as f32 * 60.0,
                120.0 + (y / 30 % 2) as f32 * 40.0,
                150.0 - (x / 80) as f32 * 10.0,
            ];
            Rgb(std::array::from_fn(|c| {
                (base[c] * gain[c] + noise).clamp(0.0, 255.0) as u8
            }))
        })
    }

    fn with_item(mut image: RgbImage, x0: u32, y0: u32, w: u32, h: u32) -> RgbImage {
        for y in y0..y0 + h {
            for x in x0..x0 + w {
                image.put_pixel(x, y, Rgb([200, 30, 40]));
            }
        }
        image
    }

    #[test]
    fn finds_the_item_despite_exposure_and_white_balance_drift() {
        let reference = scene(1, [1.0; 3]);
        let frame = with_item(scene(2, [1.2, 1.1, 0.9]), 100, 40, 80, 160);
        let Foreground::Item {
            image,
            bbox,
            coverage,
        } = isolate(&frame, &reference).unwrap()
        else {
            panic!("no item found");
        };
        let (x, y, w, h) = bbox;
        // The box holds the item with a small margin, and nothing much else.
        assert!(
            x <= 100 && y <= 40 && x + w >= 180 && y + h >= 200,
            "{bbox:?}"
        );
        assert!(w <= 80 + 24 && h <= 160 + 32, "{bbox:?}");
        assert!((0.12..0.25).contains(&coverage), "{coverage}");
        // A white square with the red item in its middle.
        assert_eq!(image.width(), image.height());
        assert_eq!(
            image.get_pixel(image.width() / 2, image.height() / 2).0,
            [200, 30, 40]
        );
        assert_eq!(image.get_pixel(1, image.height() / 2).0, [255, 255, 255]);
    }

    #[test]
    fn an_empty_scene_is_nothing_even_with_drift() {
        let reference = scene(1, [1.0; 3]);
        let frame = scene(3, [0.8, 0.85, 0.9]);
        assert!(matches!(
            isolate(&frame, &reference).unwrap(),
            Foreground::Nothing { .. }
        ));
    }

    #[test]
    fn a_reference_of_another_size_asks_for_recalibration() {
        let reference = scene(1, [1.0; 3]);
        let frame = image::imageops::resize(&reference, 160, 120, image::imageops::Nearest);
        let err = isolate(&frame, &reference).unwrap_err();
        assert!(format!("{err}").contains("recalibrate"), "{err}");
    }

    #[test]
    fn averaging_reduces_noise() {
        let frames: Vec<RgbImage> = (1..=8).map(|s| scene(s, [1.0; 3])).collect();
        let clean = scene(0, [1.0; 3]);
        let error = |a: &RgbImage| -> f64 {
            let sum: f64 = a
                .as_raw()
                .iter()
                .zip(clean.as_raw())
                .map(|(&p, &c)| (p as f64 - c as f64).abs())
                .sum();
            sum / a.as_raw().len() as f64
        };
        let mean = average(&frames).unwrap();
        // One frame is ±4 noise (mean error ~2); eight averaged, under half that.
        assert!(error(&frames[0]) > 1.5, "{}", error(&frames[0]));
        assert!(error(&mean) < error(&frames[0]) / 2.0, "{}", error(&mean));
    }
}
