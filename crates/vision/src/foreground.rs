//! Finding the item in a fixed camera's frame. The kiosk camera does not move, so the empty scene
//! (the reference, see `calibrate`) tells the item apart: the frame is compared with the reference
//! after matching their exposure and white balance, the difference is thresholded above the
//! sensor's noise, cleaned up, and the item's bounding box (with a margin) is cut out and placed,
//! masked, on a white square — like the catalogue's studio shots — before it is embedded. Without
//! a reference, the item is what stands out from the store around it (`isolate_without_reference`).

use std::path::Path;

use anyhow::{ensure, Context, Result};
use image::{Rgb, RgbImage};

use kiosk_util::files::write_atomically;

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
        /// Per channel, the frame's light relative to the empty scene's (1 without a scene).
        gains: [f32; 3],
    },
    /// Nothing differs from the empty scene enough to be an item (without a reference: nothing
    /// stands out, or the frame is a studio shot to be embedded whole).
    Nothing { coverage: f32 },
}

/// Mean of each CELL×CELL block per channel, with the grid's width and height in cells.
pub(crate) fn cell_means(image: &RgbImage) -> (Vec<[f32; 3]>, u32, u32) {
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

/// The median of `values` (reordered).
pub(crate) fn median_of(values: &mut [f32]) -> f32 {
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

/// `mask` eroded by one cell (3×3): its inner part, away from its edge.
pub(crate) fn eroded(mask: &[bool], w: usize, h: usize) -> Vec<bool> {
    morph(mask, w, h, true)
}

/// The 8-neighbours of cell `i` in a `w`×`h` grid.
fn neighbours(i: usize, w: usize, h: usize) -> impl Iterator<Item = usize> {
    let (x, y) = (i % w, i / w);
    let columns = x.saturating_sub(1)..=(x + 1).min(w - 1);
    (y.saturating_sub(1)..=(y + 1).min(h - 1))
        .flat_map(move |ny| columns.clone().map(move |nx| ny * w + nx))
        .filter(move |&j| j != i)
}

/// Closes small gaps inside a mask's parts (dilate, erode), then drops specks (erode, dilate).
fn clean_up(mask: &[bool], w: usize, h: usize) -> Vec<bool> {
    let closed = morph(&morph(mask, w, h, false), w, h, true);
    morph(&morph(&closed, w, h, true), w, h, false)
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
            for j in neighbours(i, w, h) {
                if mask[j] && labels[j] == 0 {
                    labels[j] = label;
                    stack.push(j);
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

/// A channel value this high may be clipped: the scene there was at least this bright.
const CLIPPED: f32 = 240.0;

/// How far a frame's channel value is from the reference's, scaled by the channel's gain. A
/// clipped value only bounds the scene from below, so where one side is clipped only a frame
/// darker (reference clipped) or brighter (frame clipped) than that bound counts; both clipped
/// agree (a bright poster under a little more or less exposure).
fn channel_difference(frame: f32, reference: f32, gain: f32) -> f32 {
    let expected = gain * reference;
    match (frame >= CLIPPED, reference >= CLIPPED) {
        (true, true) => 0.0,
        (false, true) => (expected - frame).max(0.0),
        (true, false) => (frame - expected).max(0.0),
        (false, false) => (frame - expected).abs(),
    }
}

/// The largest channel difference between a frame pixel and the gain-matched reference pixel.
fn pixel_difference(frame: Rgb<u8>, reference: Rgb<u8>, gains: &[f32; 3]) -> f32 {
    (0..3)
        .map(|c| channel_difference(frame.0[c] as f32, reference.0[c] as f32, gains[c]))
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
    let typical = median_of(&mut sample);
    let mut deviations: Vec<f32> = sample.iter().map(|d| (d - typical).abs()).collect();
    let spread = 1.4826 * median_of(&mut deviations);
    (typical + 6.0 * spread).max(typical + 14.0)
}

/// The empty scene of a fixed camera as calibration saw it: its mean picture and, where several
/// frames were averaged, how much each cell's mean varied between them (its own noise: a screen
/// or a flickering lamp in view varies more than a wall).
#[derive(Debug, Clone)]
pub struct BackgroundModel {
    image: RgbImage,
    /// Per cell: the standard deviation of the cell's mean across the calibration frames, the
    /// largest over the channels; `None` for a single frame.
    noise: Option<Vec<f32>>,
}

impl BackgroundModel {
    /// The model of one picture of the empty scene (its noise is estimated from each frame).
    pub fn from_image(image: RgbImage) -> Self {
        BackgroundModel { image, noise: None }
    }

    /// The model of several frames of the empty scene: their mean and each cell's noise.
    pub fn from_frames(frames: &[RgbImage]) -> Result<Self> {
        let image = average(frames)?;
        let noise = (frames.len() >= 2).then(|| {
            let means: Vec<Vec<[f32; 3]>> = frames.iter().map(|f| cell_means(f).0).collect();
            let n = frames.len() as f32;
            (0..means[0].len())
                .map(|i| {
                    (0..3)
                        .map(|c| {
                            let mean = means.iter().map(|m| m[i][c]).sum::<f32>() / n;
                            let var = means.iter().map(|m| (m[i][c] - mean).powi(2)).sum::<f32>()
                                / (n - 1.0);
                            var.sqrt()
                        })
                        .fold(0.0, f32::max)
                })
                .collect()
        });
        Ok(BackgroundModel { image, noise })
    }

    /// The model from a stored mean picture and noise map (`None`: estimated per frame); a noise
    /// map of another size than the picture's cells is an error.
    pub fn from_parts(image: RgbImage, noise: Option<Vec<f32>>) -> Result<Self> {
        if let Some(noise) = &noise {
            let cells = (image.width() / CELL) as usize * (image.height() / CELL) as usize;
            ensure!(
                noise.len() == cells,
                "the noise map has {} cells, the {}×{} scene {cells}",
                noise.len(),
                image.width(),
                image.height()
            );
        }
        Ok(BackgroundModel { image, noise })
    }

    /// The empty scene's mean picture.
    pub fn image(&self) -> &RgbImage {
        &self.image
    }

    /// Per cell of [`CELL`]×[`CELL`] pixels, the calibration frames' noise, if known.
    pub fn noise(&self) -> Option<&[f32]> {
        self.noise.as_deref()
    }
}

/// Side of the square cells, in pixels, that the foreground step and noise maps work on.
pub const fn cell_size() -> u32 {
    CELL
}

/// Per channel, how much brighter the frame's light is than the reference's (exposure and white
/// balance drift), from the cells that are background with confidence: the mode of the cells'
/// ratios on the frame's border ring (an item is seldom all around the frame's edge), refined
/// with every cell of the frame that agrees with it. Never from the whole frame's median: an item
/// held close can be most of it. A channel without a cell bright enough and unclipped on both
/// sides (a saturated wall) takes the other channels' exposure.
fn scene_gains(f: &[[f32; 3]], r: &[[f32; 3]], ring: &[usize]) -> [f32; 3] {
    let log_ratio = |i: usize, c: usize| ((f[i][c] + 4.0) / (r[i][c] + 4.0)).ln();
    let usable = |i: usize, c: usize| f[i][c] < CLIPPED && r[i][c] < CLIPPED && r[i][c] >= 24.0;
    let modes: [Option<f32>; 3] = std::array::from_fn(|c| {
        let mut from: Vec<f32> = ring
            .iter()
            .filter(|&&i| usable(i, c))
            .map(|&i| log_ratio(i, c))
            .collect();
        if from.len() < 16 {
            from = (0..f.len())
                .filter(|&i| usable(i, c))
                .map(|i| log_ratio(i, c))
                .collect();
        }
        (from.len() >= 8).then(|| mode(&from))
    });
    let agrees = |i: usize| {
        (0..3).all(|c| {
            modes[c].is_none_or(|m| !usable(i, c) || (log_ratio(i, c) - m).abs() <= GAIN_AGREEMENT)
        })
    };
    let agreeing: Vec<usize> = (0..f.len()).filter(|&i| agrees(i)).collect();
    let logs: [Option<f32>; 3] = std::array::from_fn(|c| {
        let mut values: Vec<f32> = agreeing
            .iter()
            .filter(|&&i| usable(i, c))
            .map(|&i| log_ratio(i, c))
            .collect();
        if values.len() >= 8 {
            Some(median_of(&mut values))
        } else {
            modes[c]
        }
    });
    let known: Vec<f32> = logs.iter().flatten().copied().collect();
    let exposure = if known.is_empty() {
        0.0
    } else {
        known.iter().sum::<f32>() / known.len() as f32
    };
    logs.map(|l| l.unwrap_or(exposure).exp())
}

/// The sensor's noise at cell scale: the typical difference, in the channels clipped on neither
/// side, of the flatter half of the cells that are probably background (each usable channel's
/// ratio within [`PROBABLY_BACKGROUND`] of the gain), on the border ring when it has enough of
/// them (an item held close can cover much of it, flat as a board), else anywhere.
fn sensor_noise(
    f: &[[f32; 3]],
    r: &[[f32; 3]],
    gains: &[f32; 3],
    texture: &[f32],
    ring: &[usize],
) -> f32 {
    let unclipped_difference = |i: usize| {
        (0..3)
            .filter(|&c| f[i][c] < CLIPPED && r[i][c] < CLIPPED)
            .map(|c| (f[i][c] - gains[c] * r[i][c]).abs())
            .reduce(f32::max)
    };
    let probably_background = |i: usize| {
        (0..3).all(|c| {
            f[i][c] >= CLIPPED
                || r[i][c] < 24.0
                || ((f[i][c] + 4.0) / (gains[c] * r[i][c] + 4.0)).ln().abs() <= PROBABLY_BACKGROUND
        })
    };
    let candidates = |cells: &mut dyn Iterator<Item = usize>| -> Vec<(f32, f32)> {
        cells
            .filter(|&i| probably_background(i))
            .filter_map(|i| unclipped_difference(i).map(|d| (texture[i], d)))
            .collect()
    };
    let mut sample = candidates(&mut ring.iter().copied());
    if sample.len() < 16 {
        sample = candidates(&mut (0..f.len()));
    }
    if sample.is_empty() {
        return MIN_SENSOR_NOISE;
    }
    sample.sort_by(|a, b| a.0.total_cmp(&b.0));
    sample.truncate(sample.len().div_ceil(2));
    let mut differences: Vec<f32> = sample.iter().map(|&(_, d)| d).collect();
    median_of(&mut differences).max(MIN_SENSOR_NOISE)
}

/// A cell whose ratio to the scene is within this (log) of the gain in every channel is probably
/// background, for estimating the noise.
const PROBABLY_BACKGROUND: f32 = 0.15;

/// Cells whose log ratio is this close to the mode in every channel agree with the scene's gain.
const GAIN_AGREEMENT: f32 = 0.06;

/// The densest value of `values` (a histogram of 0.02-wide bins, smoothed, refined by the mean
/// of the values within a bin of the peak).
fn mode(values: &[f32]) -> f32 {
    const BIN: f32 = 0.02;
    const BINS: usize = 200;
    let bin = |v: f32| ((v / BIN) + BINS as f32 / 2.0).floor();
    let mut histogram = [0f32; BINS];
    for &v in values {
        let b = bin(v);
        if (0.0..BINS as f32).contains(&b) {
            histogram[b as usize] += 1.0;
        }
    }
    let smoothed: Vec<f32> = (0..BINS)
        .map(|b| {
            let at = |k: isize| histogram.get(k as usize).copied().unwrap_or(0.0);
            let b = b as isize;
            at(b - 1) + 2.0 * at(b) + at(b + 1)
        })
        .collect();
    let peak = (0..BINS)
        .max_by(|&a, &b| smoothed[a].total_cmp(&smoothed[b]))
        .unwrap_or(BINS / 2);
    let centre = (peak as f32 + 0.5 - BINS as f32 / 2.0) * BIN;
    let near: Vec<f32> = values
        .iter()
        .copied()
        .filter(|v| (v - centre).abs() <= 1.5 * BIN)
        .collect();
    if near.is_empty() {
        centre
    } else {
        near.iter().sum::<f32>() / near.len() as f32
    }
}

/// Per cell, its largest step to a 4-neighbour in any channel: how much a blur or a shift of
/// less than a cell can change the cell's mean in a textured part of the scene.
fn texture(r: &[[f32; 3]], w: usize, h: usize) -> Vec<f32> {
    (0..r.len())
        .map(|i| {
            let (x, y) = (i % w, i / w);
            [
                (x > 0).then(|| i - 1),
                (x + 1 < w).then(|| i + 1),
                (y > 0).then(|| i - w),
                (y + 1 < h).then(|| i + w),
            ]
            .into_iter()
            .flatten()
            .map(|j| {
                (0..3)
                    .map(|c| (r[i][c] - r[j][c]).abs())
                    .fold(0.0, f32::max)
            })
            .fold(0.0, f32::max)
        })
        .collect()
}

/// The cells on the grid's outer ring.
fn ring_cells(w: usize, h: usize) -> Vec<usize> {
    (0..w * h)
        .filter(|&i| i % w == 0 || i % w == w - 1 || i / w == 0 || i / w == h - 1)
        .collect()
}

/// The least noise a cell's mean is taken to have (8-bit pixels, JPEG).
const MIN_SENSOR_NOISE: f32 = 1.0;
/// Share of a cell's texture (largest step to a neighbour) that may show up as a difference.
const TEXTURE_SHARE: f32 = 0.25;
/// A cell this many noise levels away from the scene is surely the item; one half as far is the
/// item when it touches such a cell (pale and see-through parts of an item).
const SURE: f32 = 5.0;
const LIKELY: f32 = 3.0;
/// Holes in the item up to this share of its size are filled (a pale part inside it).
const HOLE_SHARE: f32 = 0.25;

/// Separates the item in `frame` from the empty scene `scene` (same camera, same size).
///
/// Each cell's difference from the scene, once the frame's light is matched to the scene's
/// (exposure and white balance from cells that are background with confidence), is weighed
/// against what that cell of the background varies by: the sensor's noise (from the frame's
/// least textured border cells), the cell's own noise in calibration, and its texture (where a
/// blur moves edges). Cells far beyond it are the item, and cells half as far that touch them
/// (pale and see-through parts); enclosed holes are filled. The item is cut out on white with
/// its edge refined pixel by pixel; `Item::gains` says how the frame's light differed.
pub fn isolate(frame: &RgbImage, scene: &BackgroundModel) -> Result<Foreground> {
    Ok(match locate(frame, scene)? {
        Located::Item(item) => item.cut_out(frame, scene),
        Located::Nothing { coverage } => Foreground::Nothing { coverage },
    })
}

/// Where the item is in a frame, on the grid of [`CELL`]-pixel cells.
#[derive(Debug, Clone)]
pub struct ItemCells {
    /// Per cell, whether it is the item's.
    pub cells: Vec<bool>,
    /// Cells across the frame.
    pub cells_wide: u32,
    /// Share of the frame's cells that are the item's.
    pub coverage: f32,
    /// Per channel, the frame's light relative to the empty scene's.
    pub gains: [f32; 3],
}

/// What a frame holds against its empty scene, before anything is cut out.
#[derive(Debug, Clone)]
pub enum Located {
    Item(ItemCells),
    Nothing { coverage: f32 },
}

impl ItemCells {
    /// The item cut out of `frame` on white, its edge refined pixel by pixel: inside cells are
    /// the item; cells next to its edge keep only the pixels that differ from the scene by more
    /// than the pixels' own noise (cells are coarse).
    pub fn cut_out(&self, frame: &RgbImage, scene: &BackgroundModel) -> Foreground {
        let reference = &scene.image;
        let (w, h) = (
            self.cells_wide as usize,
            self.cells.len() / self.cells_wide as usize,
        );
        let pixel_threshold =
            pixel_noise_threshold(frame, reference, &self.gains, &self.cells, self.cells_wide);
        let grown = morph(&self.cells, w, h, false);
        let inner = morph(&self.cells, w, h, true);
        place_on_white(
            frame,
            &self.cells,
            self.cells_wide,
            self.coverage,
            self.gains,
            |x, y, cell| {
                inner[cell]
                    || (grown[cell]
                        && pixel_difference(
                            *frame.get_pixel(x, y),
                            *reference.get_pixel(x, y),
                            &self.gains,
                        ) > pixel_threshold)
            },
        )
    }
}

/// Finds the item's cells in `frame` against the empty scene `scene` (see [`isolate`]).
pub fn locate(frame: &RgbImage, scene: &BackgroundModel) -> Result<Located> {
    let reference = &scene.image;
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
    let (f, w, h) = cell_means(frame);
    let (r, _, _) = cell_means(reference);
    let (wu, hu) = (w as usize, h as usize);
    let n = f.len();
    let ring = ring_cells(wu, hu);
    let gains = scene_gains(&f, &r, &ring);
    let difference: Vec<f32> = (0..n)
        .map(|i| {
            (0..3)
                .map(|c| channel_difference(f[i][c], r[i][c], gains[c]))
                .fold(0.0, f32::max)
        })
        .collect();
    let texture = texture(&r, wu, hu);
    let brightest_gain = gains.iter().copied().fold(0.0, f32::max);
    let sensor = sensor_noise(&f, &r, &gains, &texture, &ring);
    // How many noise levels each cell is from the scene, beyond what its texture explains.
    let score: Vec<f32> = (0..n)
        .map(|i| {
            let own = scene.noise.as_ref().map_or(0.0, |noise| noise[i]);
            let noise = (sensor * sensor + (brightest_gain * own).powi(2)).sqrt();
            (difference[i] - TEXTURE_SHARE * brightest_gain * texture[i]).max(0.0) / noise
        })
        .collect();
    let sure: Vec<bool> = score.iter().map(|&z| z > SURE).collect();
    let likely: Vec<bool> = score.iter().map(|&z| z > LIKELY).collect();
    let mask = hysteresis(&likely, &sure, wu, hu);

    let (labels, sizes) = components(&clean_up(&mask, wu, hu), wu, hu);
    let largest = sizes.iter().copied().max().unwrap_or(0);
    let coverage = largest as f32 / n as f32;
    if coverage < MIN_COVERAGE {
        return Ok(Located::Nothing { coverage });
    }
    // The item: the largest part, and any part at least a twentieth its size close to it (a pair
    // of shoes; a face above a shirt the colour of the wall); a far-off part is a change in the
    // scene (a moved poster), not the item.
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
        .map(|l| l == main || (l > 0 && sizes[l] * 20 >= largest && near(l)))
        .collect();
    let item: Vec<bool> = labels.iter().map(|&l| l != 0 && keep[l as usize]).collect();
    let item = fill_holes(&item, wu, hu, HOLE_SHARE);
    let coverage = item.iter().filter(|&&m| m).count() as f32 / n as f32;
    Ok(Located::Item(ItemCells {
        cells: item,
        cells_wide: w,
        coverage,
        gains,
    }))
}

/// The cells of `weak` connected (8-neighbour) to a cell of `strong`.
fn hysteresis(weak: &[bool], strong: &[bool], w: usize, h: usize) -> Vec<bool> {
    let candidates: Vec<bool> = weak.iter().zip(strong).map(|(&a, &b)| a || b).collect();
    let (labels, sizes) = components(&candidates, w, h);
    let mut anchored = vec![false; sizes.len()];
    for (i, &l) in labels.iter().enumerate() {
        if strong[i] {
            anchored[l as usize] = true;
        }
    }
    labels
        .iter()
        .map(|&l| l != 0 && anchored[l as usize])
        .collect()
}

/// `mask` with its holes — parts outside it that do not reach the grid's edge — filled where
/// they are at most `share` of the mask's size.
fn fill_holes(mask: &[bool], w: usize, h: usize, share: f32) -> Vec<bool> {
    let outside: Vec<bool> = mask.iter().map(|&m| !m).collect();
    let (gaps, gap_sizes) = components(&outside, w, h);
    let mut open = vec![false; gap_sizes.len()];
    for i in ring_cells(w, h) {
        open[gaps[i] as usize] = true;
    }
    let size = mask.iter().filter(|&&m| m).count() as f32;
    (0..mask.len())
        .map(|i| {
            let gap = gaps[i] as usize;
            mask[i] || (!open[gap] && gap_sizes[gap] as f32 <= share * size)
        })
        .collect()
}

/// A frame whose border cells are this share near-white (each channel at least [`STUDIO_WHITE`])
/// is a studio shot.
const STUDIO_BORDER: f32 = 0.75;
const STUDIO_WHITE: f32 = 235.0;
/// Without an empty scene, neighbouring cells that differ by at most this much (largest channel
/// difference) belong to one flat region: a wall, a shelf, a poster.
const FLAT_STEP: f32 = 12.0;
/// A flat region of at least this many cells that fills this share of its bounding box is a
/// rectangle of the store (a shelf, a poster, a door), not the item.
const STRUCTURE_CELLS: usize = 30;
const STRUCTURE_FILL: f32 = 0.85;
/// Steps between neighbouring cells up to this size are noise, texture or a smooth gradient and
/// cost nothing on the way in from the background.
const STEP_NOISE: f32 = 3.0;
/// A cell is salient when every way in from the background crosses edges adding up to this much.
const SALIENCE: f32 = 30.0;

/// Finds the item in a frame without an empty scene, by what sets it apart from the background:
/// the frame's border and the flat rectangles of the store (shelves, posters) are background; a
/// cell is part of the item when every path to it from the background crosses strong edges
/// (a geodesic distance, where steps below the noise cost nothing). Of the salient parts, the
/// one that is large and near the middle of the frame is the item (the kiosk frames its
/// shopper), with its holes filled. `Nothing` means no salient part: the caller falls back to the
/// centred square (without a reference an empty scene cannot be told from a plain item).
/// A studio shot on white (the catalogue's own kind of image: its border mostly near-white) is
/// `Nothing` too, so that it is embedded whole, exactly as the catalogue was indexed; and so is a
/// frame too small to tell anything apart.
pub fn isolate_without_reference(frame: &RgbImage) -> Foreground {
    if frame.width() < 16 * CELL || frame.height() < 16 * CELL {
        return Foreground::Nothing { coverage: 0.0 };
    }
    let (f, w, h) = cell_means(frame);
    let (wu, hu) = (w as usize, h as usize);
    let n = f.len();
    let ring = ring_cells(wu, hu);
    let white = ring
        .iter()
        .filter(|&&i| f[i].iter().all(|&c| c >= STUDIO_WHITE))
        .count();
    if white as f32 >= STUDIO_BORDER * ring.len() as f32 {
        return Foreground::Nothing { coverage: 0.0 };
    }
    let step = |a: usize, b: usize| {
        (0..3)
            .map(|c| (f[a][c] - f[b][c]).abs())
            .fold(0.0, f32::max)
    };

    let mut background = store_structure(wu, hu, &step);
    for &i in &ring {
        background[i] = true;
    }
    let distance = distance_from(&background, wu, hu, |a, b| {
        (step(a, b) - STEP_NOISE).max(0.0) + 0.01
    });
    let mask: Vec<bool> = distance.iter().map(|&d| d > SALIENCE).collect();
    let (labels, sizes) = components(&clean_up(&mask, wu, hu), wu, hu);

    // Large and central: size, weighted down with the part's distance from the frame's middle.
    let mut sums = vec![(0f32, 0f32); sizes.len()];
    for (i, &l) in labels.iter().enumerate() {
        let s = &mut sums[l as usize];
        s.0 += (i % wu) as f32;
        s.1 += (i / wu) as f32;
    }
    let score = |l: usize| {
        let count = sizes[l] as f32;
        let dx = sums[l].0 / count / wu as f32 - 0.5;
        let dy = sums[l].1 / count / hu as f32 - 0.5;
        count * (-(dx * dx / 0.05 + dy * dy / 0.08)).exp()
    };
    let Some(main) = (1..sizes.len()).max_by(|&a, &b| score(a).total_cmp(&score(b))) else {
        return Foreground::Nothing { coverage: 0.0 };
    };
    let coverage = sizes[main] as f32 / n as f32;
    if coverage < MIN_COVERAGE {
        return Foreground::Nothing { coverage };
    }
    // Holes: what is not the item and cannot be reached from the frame's edge without crossing it.
    let part: Vec<bool> = labels.iter().map(|&l| l as usize == main).collect();
    let item = fill_holes(&part, wu, hu, f32::INFINITY);
    let coverage = item.iter().filter(|&&m| m).count() as f32 / n as f32;
    place_on_white(frame, &item, w, coverage, [1.0; 3], |_, _, cell| item[cell])
}

/// Cells of flat regions shaped like upright rectangles ([`STRUCTURE_FILL`] of their box): the
/// store's shelves, posters and doors. `step(a, b)` is the difference between two cells.
fn store_structure(w: usize, h: usize, step: &impl Fn(usize, usize) -> f32) -> Vec<bool> {
    let mut region = vec![usize::MAX; w * h];
    let mut structure = vec![false; w * h];
    let mut stack = Vec::new();
    let mut members = Vec::new();
    for start in 0..w * h {
        if region[start] != usize::MAX {
            continue;
        }
        region[start] = start;
        stack.push(start);
        members.clear();
        let (mut x0, mut y0, mut x1, mut y1) = (w, h, 0, 0);
        while let Some(i) = stack.pop() {
            members.push(i);
            let (x, y) = (i % w, i / w);
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x + 1), y1.max(y + 1));
            for j in four_neighbours(i, w, h).into_iter().flatten() {
                if region[j] == usize::MAX && step(i, j) <= FLAT_STEP {
                    region[j] = start;
                    stack.push(j);
                }
            }
        }
        let filled = members.len() as f32 >= STRUCTURE_FILL * ((x1 - x0) * (y1 - y0)) as f32;
        if members.len() >= STRUCTURE_CELLS && filled {
            for &i in &members {
                structure[i] = true;
            }
        }
    }
    structure
}

/// The cheapest path cost to each cell of a `w`×`h` grid from any `source` cell, moving between
/// 8-neighbours at `cost(a, b)` (Dijkstra).
fn distance_from(
    source: &[bool],
    w: usize,
    h: usize,
    cost: impl Fn(usize, usize) -> f32,
) -> Vec<f32> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    /// A cell and its distance, ordered by distance.
    #[derive(PartialEq)]
    struct Reached(f32, usize);
    impl Eq for Reached {}
    impl PartialOrd for Reached {
        fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(other))
        }
    }
    impl Ord for Reached {
        fn cmp(&self, other: &Self) -> std::cmp::Ordering {
            self.0.total_cmp(&other.0).then(self.1.cmp(&other.1))
        }
    }
    let mut distance = vec![f32::INFINITY; w * h];
    let mut heap = BinaryHeap::new();
    for (i, _) in source.iter().enumerate().filter(|(_, &s)| s) {
        distance[i] = 0.0;
        heap.push(Reverse(Reached(0.0, i)));
    }
    while let Some(Reverse(Reached(d, i))) = heap.pop() {
        if d > distance[i] {
            continue;
        }
        for j in neighbours(i, w, h) {
            let through = d + cost(i, j);
            if through < distance[j] {
                distance[j] = through;
                heap.push(Reverse(Reached(through, j)));
            }
        }
    }
    distance
}

/// The item's cells (`item`, a grid `cells_wide` across) cut out of `frame` with a margin of 6%
/// of their box each side and placed on a white square; `keep(x, y, cell)` says whether the
/// frame pixel (x, y), in grid cell `cell`, is the item's (the others turn white). `gains` is the
/// frame's light relative to the empty scene's, passed on in the result.
fn place_on_white(
    frame: &RgbImage,
    item: &[bool],
    cells_wide: u32,
    coverage: f32,
    gains: [f32; 3],
    keep: impl Fn(u32, u32, usize) -> bool,
) -> Foreground {
    let (w, h) = (cells_wide, frame.height() / CELL);
    let (mut x0, mut y0, mut x1, mut y1) = (w, h, 0, 0);
    for (i, _) in item.iter().enumerate().filter(|(_, &m)| m) {
        let (x, y) = (i as u32 % w, i as u32 / w);
        x0 = x0.min(x);
        y0 = y0.min(y);
        x1 = x1.max(x + 1);
        y1 = y1.max(y + 1);
    }
    let (bw, bh) = ((x1 - x0) * CELL, (y1 - y0) * CELL);
    let margin_x = bw * 6 / 100;
    let margin_y = bh * 6 / 100;
    let left = (x0 * CELL).saturating_sub(margin_x);
    let top = (y0 * CELL).saturating_sub(margin_y);
    let right = (x1 * CELL + margin_x).min(frame.width());
    let bottom = (y1 * CELL + margin_y).min(frame.height());
    let (cw, ch) = (right - left, bottom - top);
    let side = cw.max(ch);
    let (ox, oy) = ((side - cw) / 2, (side - ch) / 2);
    let mut square = RgbImage::from_pixel(side, side, Rgb([255, 255, 255]));
    for y in 0..ch {
        for x in 0..cw {
            let (fx, fy) = (left + x, top + y);
            let cell = ((fy / CELL).min(h - 1) * w + (fx / CELL).min(w - 1)) as usize;
            if keep(fx, fy, cell) {
                square.put_pixel(ox + x, oy + y, *frame.get_pixel(fx, fy));
            }
        }
    }
    Foreground::Item {
        image: square,
        bbox: (left, top, cw, ch),
        coverage,
        gains,
    }
}

/// The cells left, right, above and below cell `at` of a `width` × `height` grid (row-major),
/// `None` past an edge.
pub fn four_neighbours(at: usize, width: usize, height: usize) -> [Option<usize>; 4] {
    let (x, y) = (at % width, at / width);
    [
        (x > 0).then(|| at - 1),
        (x + 1 < width).then(|| at + 1),
        (y > 0).then(|| at - width),
        (y + 1 < height).then(|| at + width),
    ]
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

/// An image as PNG bytes.
pub fn encode_png(image: &RgbImage) -> Result<Vec<u8>> {
    let mut png = Vec::new();
    image.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
    Ok(png)
}

/// Writes an image (the reference, a cut-out) as a PNG, atomically.
pub fn save_png(path: &Path, image: &RgbImage) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let png = encode_png(image).with_context(|| format!("cannot encode {}", path.display()))?;
    write_atomically(path, &png)
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
            gains,
        } = isolate(&frame, &BackgroundModel::from_image(reference)).unwrap()
        else {
            panic!("no item found");
        };
        // The drift is measured on the scene, not on the item.
        for (gain, drift) in gains.iter().zip([1.2, 1.1, 0.9]) {
            assert!((gain - drift).abs() < 0.02, "{gains:?}");
        }
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
            isolate(&frame, &BackgroundModel::from_image(reference)).unwrap(),
            Foreground::Nothing { .. }
        ));
    }

    #[test]
    fn clipped_highlights_under_a_little_less_light_are_not_an_item() {
        // A bright poster whose red and green clip in both frames, at 90% of the light.
        let lit = |seed, gain: f32| {
            let mut image = scene(seed, [gain; 3]);
            let bright = (290.0 * gain).min(255.0) as u8;
            for y in 20..80 {
                for x in 200..300 {
                    image.put_pixel(x, y, Rgb([bright, bright, (200.0 * gain) as u8]));
                }
            }
            image
        };
        assert!(matches!(
            isolate(&lit(3, 0.9), &BackgroundModel::from_image(lit(1, 1.0))).unwrap(),
            Foreground::Nothing { .. }
        ));
    }

    #[test]
    fn a_reference_of_another_size_asks_for_recalibration() {
        let reference = scene(1, [1.0; 3]);
        let frame = image::imageops::resize(&reference, 160, 120, image::imageops::Nearest);
        let err = isolate(&frame, &BackgroundModel::from_image(reference)).unwrap_err();
        assert!(format!("{err}").contains("recalibrate"), "{err}");
    }

    /// A store without its camera's reference: a wall with a gradient and noise, and a poster
    /// (a flat upright rectangle) at `poster` (x, y, width, height).
    fn store(poster: (u32, u32, u32, u32)) -> RgbImage {
        let mut state = 7u32;
        RgbImage::from_fn(320, 240, |x, y| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let noise = (state % 7) as f32 - 3.0;
            let (px, py, pw, ph) = poster;
            let base = if (px..px + pw).contains(&x) && (py..py + ph).contains(&y) {
                [40.0, 60.0, 200.0]
            } else {
                let shade = 1.0 - 0.2 * x as f32 / 320.0 - 0.1 * y as f32 / 240.0;
                [170.0 * shade, 150.0 * shade, 120.0 * shade]
            };
            Rgb(base.map(|b| (b + noise).clamp(0.0, 255.0) as u8))
        })
    }

    /// A striped garment-like ellipse centred at (cx, cy) with half-axes (rx, ry).
    fn with_garment(mut image: RgbImage, (cx, cy): (f32, f32), (rx, ry): (f32, f32)) -> RgbImage {
        for y in 0..image.height() {
            for x in 0..image.width() {
                let (dx, dy) = ((x as f32 - cx) / rx, (y as f32 - cy) / ry);
                if dx * dx + dy * dy <= 1.0 {
                    let stripe = (x + y) / 6 % 2 == 0;
                    let colour = if stripe { [200, 30, 40] } else { [30, 30, 30] };
                    image.put_pixel(x, y, Rgb(colour));
                }
            }
        }
        image
    }

    #[test]
    fn without_a_reference_the_item_stands_out_from_the_store_and_its_poster() {
        // The poster touches the garment: the garment's box must not take it in.
        let frame = with_garment(store((196, 30, 90, 70)), (150.0, 120.0), (50.0, 90.0));
        let Foreground::Item { image, bbox, .. } = isolate_without_reference(&frame) else {
            panic!("no item found");
        };
        let (x, y, w, h) = bbox;
        assert!(
            x <= 100 && y <= 30 && x + w >= 200 && y + h >= 210,
            "{bbox:?}"
        );
        assert!(
            x + w <= 215 && w <= 100 + 20,
            "the poster was taken in: {bbox:?}"
        );
        // The garment on white: its middle kept, the wall beside it turned white.
        let (side, middle) = (image.width(), image.height() / 2);
        assert_ne!(image.get_pixel(side / 2, middle).0, [255, 255, 255]);
        assert_eq!(image.get_pixel(2, middle).0, [255, 255, 255]);
    }

    #[test]
    fn without_a_reference_a_studio_shot_on_white_is_left_whole() {
        let white = RgbImage::from_pixel(320, 240, Rgb([252, 253, 251]));
        let shot = with_garment(white, (160.0, 120.0), (60.0, 100.0));
        assert!(matches!(
            isolate_without_reference(&shot),
            Foreground::Nothing { .. }
        ));
    }

    #[test]
    fn without_a_reference_a_bare_store_has_nothing_that_stands_out() {
        assert!(matches!(
            isolate_without_reference(&store((20, 20, 80, 60))),
            Foreground::Nothing { .. }
        ));
    }

    #[test]
    fn without_a_reference_the_item_near_the_middle_wins_over_one_at_the_side() {
        let frame = with_garment(
            with_garment(store((0, 0, 1, 1)), (40.0, 120.0), (30.0, 60.0)),
            (170.0, 120.0),
            (40.0, 70.0),
        );
        let Foreground::Item { bbox, .. } = isolate_without_reference(&frame) else {
            panic!("no item found");
        };
        assert!(bbox.0 >= 100 && bbox.0 <= 130, "{bbox:?}");
    }

    #[test]
    fn an_item_held_close_filling_most_of_the_frame_is_found_under_exposure_drift() {
        // 280×200 of 320×240: 73% of the frame, 25% more light than at calibration.
        let reference = BackgroundModel::from_image(scene(1, [1.0; 3]));
        let mut frame = scene(2, [1.25, 1.2, 1.15]);
        for y in 20..220 {
            for x in 20..300 {
                let shade = if (x / 12 + y / 9) % 2 == 0 { 40 } else { 70 };
                frame.put_pixel(x, y, Rgb([shade + 120, shade, shade / 2]));
            }
        }
        let Foreground::Item { bbox, gains, .. } = isolate(&frame, &reference).unwrap() else {
            panic!("an item covering most of the frame was not found");
        };
        let (x, y, w, h) = bbox;
        assert!(
            x <= 20 && y <= 20 && x + w >= 300 && y + h >= 220,
            "{bbox:?}"
        );
        for (gain, drift) in gains.iter().zip([1.25, 1.2, 1.15]) {
            assert!((gain - drift).abs() < 0.03, "{gains:?}");
        }
    }

    /// Vertical stripes, light and dark, with a little noise.
    fn stripes(seed: u32) -> RgbImage {
        let mut state = seed.max(1);
        RgbImage::from_fn(320, 240, |x, _| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let base = if x / 16 % 2 == 0 { 210.0 } else { 60.0 };
            let v = (base + (state % 5) as f32 - 2.0) as u8;
            Rgb([v, v, v.saturating_add(10)])
        })
    }

    #[test]
    fn a_pale_part_over_stripes_stays_with_the_item() {
        // A dark shoe upper with a pale sole below it (close to the light stripes).
        let reference = BackgroundModel::from_image(stripes(1));
        let mut frame = stripes(2);
        for y in 60..150 {
            for x in 80..240 {
                frame.put_pixel(x, y, Rgb([90, 40, 30]));
            }
        }
        for y in 150..180 {
            for x in 80..240 {
                frame.put_pixel(x, y, Rgb([224, 222, 218]));
            }
        }
        let Foreground::Item { image, bbox, .. } = isolate(&frame, &reference).unwrap() else {
            panic!("no item found");
        };
        let (_, y, _, h) = bbox;
        assert!(y <= 60 && y + h >= 180, "the sole was dropped: {bbox:?}");
        // Its middle is kept in the cut-out, not turned white (the sole is pale, not white).
        let side = image.width();
        let (_, top, _, bh) = bbox;
        let sole_row = (side - bh) / 2 + (165 - top);
        assert_eq!(image.get_pixel(side / 2, sole_row).0, [224, 222, 218]);
    }

    #[test]
    fn a_part_of_the_scene_that_flickers_in_calibration_is_not_an_item() {
        // A screen in view: its cells vary by ±25 from frame to frame.
        let flickering = |seed: u32, level: u8| {
            let mut image = scene(seed, [1.0; 3]);
            for y in 20..80 {
                for x in 220..300 {
                    image.put_pixel(x, y, Rgb([level, level, 200]));
                }
            }
            image
        };
        let calibration: Vec<RgbImage> = [100, 150, 120, 130]
            .iter()
            .enumerate()
            .map(|(i, &level)| flickering(i as u32 + 1, level))
            .collect();
        let modelled = BackgroundModel::from_frames(&calibration).unwrap();
        let frame = flickering(9, 155);
        assert!(matches!(
            isolate(&frame, &modelled).unwrap(),
            Foreground::Nothing { .. }
        ));
        // Judged against one picture, the screen's change would look like an item.
        let picture = BackgroundModel::from_image(modelled.image().clone());
        assert!(matches!(
            isolate(&frame, &picture).unwrap(),
            Foreground::Item { .. }
        ));
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
