//! Measuring outfits on annotated street photos (`shared/outfits/`): per garment (its class from
//! the mask, its colour from its pixels), the precision@k of the catalogue's category and colour
//! for the whole-frame look-up and for the parser's garments; and the parser's IoU per class.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;

use image::{GrayImage, RgbImage};

use super::{parse_frame, query_parsed, GarmentResult, Outfits};
use crate::config::OutfitConfig;
use crate::query::{self, Options, Recommendation};
use kiosk_table::catalogue::Table;
use kiosk_vision::model::Session;
use kiosk_vision::palette;
use kiosk_vision::parser::{LabelMap, ParseSession};
use kiosk_vision::preprocess::decode_file;

/// Which photos are measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Photos whose file stem's CRC-32 is 0 mod 5: never trained on, never tuned on.
    Validation,
    /// The other photos (the parser was trained on them; settings are tuned on them).
    Train,
    All,
}

impl Split {
    pub fn holds(self, stem: &str) -> bool {
        let validation = crc32fast::hash(stem.as_bytes()).is_multiple_of(5);
        match self {
            Split::Validation => validation,
            Split::Train => !validation,
            Split::All => true,
        }
    }
}

/// The figures of one garment class (or all of them).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClassFigures {
    /// Garments of the class in the masks (at least `min_share` of the view).
    pub garments: usize,
    /// Of them, found by the parser (a garment of the class looked up).
    pub found: usize,
    /// Mean precision@k of the category and of the colour name: whole-frame look-up (a) and the
    /// parser's garment (b; 0 where the parser missed the garment), its colour both with its
    /// colour's items first (as `colour_first` ranks them) and in visual order.
    pub whole_category: f64,
    pub whole_colour: f64,
    pub garment_category: f64,
    pub garment_colour: f64,
    pub garment_colour_visual: f64,
    /// The parser's IoU for the class over the measured photos' views.
    pub iou: f64,
}

impl ClassFigures {
    /// The precision figures: sums over the garments while counting, means after [`Self::average`].
    fn precisions_mut(&mut self) -> [&mut f64; 5] {
        [
            &mut self.whole_category,
            &mut self.whole_colour,
            &mut self.garment_category,
            &mut self.garment_colour,
            &mut self.garment_colour_visual,
        ]
    }

    /// Adds `other`'s counts and precision sums.
    fn add(&mut self, other: &mut ClassFigures) {
        self.garments += other.garments;
        self.found += other.found;
        for (sum, value) in self
            .precisions_mut()
            .into_iter()
            .zip(other.precisions_mut())
        {
            *sum += *value;
        }
    }

    /// Turns the precision sums into means over the garments.
    fn average(&mut self) {
        let n = self.garments.max(1) as f64;
        for value in self.precisions_mut() {
            *value /= n;
        }
    }
}

/// What measuring a folder of annotated photos came to.
#[derive(Debug, Clone, Serialize)]
pub struct OutfitFigures {
    pub photos: usize,
    pub split: Split,
    pub k: usize,
    pub per_class: BTreeMap<String, ClassFigures>,
    /// Over every garment.
    pub overall: ClassFigures,
    /// Mean IoU over the garment classes.
    pub garment_miou: f64,
    /// Photos the parser did not take for a person (looked up whole).
    pub not_a_person: usize,
    /// Median milliseconds per photo: whole-frame look-up, and outfit look-up.
    pub whole_ms: f64,
    pub outfit_ms: f64,
}

/// The annotated photos: `photos/NAME.jpg`, `masks/NAME.png` (8-bit label per pixel) and
/// `labels.txt` (`index name`).
struct Annotations {
    names: Vec<String>,
    /// Mask label → parser class (255: not counted).
    to_class: [u8; 256],
}

fn read_annotations(dir: &Path, outfits: &Outfits, split: Split) -> Result<Annotations> {
    let labels_path = dir.join("labels.txt");
    let text = std::fs::read_to_string(&labels_path)
        .with_context(|| format!("cannot read {}", labels_path.display()))?;
    let manifest = outfits.parser.manifest();
    let groups = manifest
        .provenance
        .get("class_labels")
        .and_then(|g| g.as_object())
        .with_context(|| {
            format!(
                "parser manifest {} has no provenance.class_labels (which labels make each class)",
                outfits.parser.manifest_path().display()
            )
        })?;
    let mut to_class = [255u8; 256];
    for (line_number, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let (index, name) = line
            .trim()
            .split_once(char::is_whitespace)
            .with_context(|| {
                format!(
                    "{}:{}: not `index name`",
                    labels_path.display(),
                    line_number + 1
                )
            })?;
        let index: u8 = index.parse().with_context(|| {
            format!(
                "{}:{}: bad index {index:?}",
                labels_path.display(),
                line_number + 1
            )
        })?;
        let class = groups
            .iter()
            .find(|(_, labels)| {
                labels
                    .as_array()
                    .is_some_and(|l| l.iter().any(|v| v.as_str() == Some(name.trim())))
            })
            .map(|(class, _)| class);
        if let Some(class) = class {
            let position = manifest
                .classes
                .iter()
                .position(|c| c == class)
                .with_context(|| {
                    format!("parser manifest: class_labels names {class:?}, which is not a class")
                })?;
            to_class[index as usize] = position as u8;
        }
    }
    let mut names: Vec<String> = std::fs::read_dir(dir.join("photos"))
        .with_context(|| format!("cannot list {}", dir.join("photos").display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let path = e.path();
            (path.extension()? == "jpg").then(|| path.file_stem()?.to_str().map(String::from))?
        })
        .filter(|stem| split.holds(stem))
        .collect();
    names.sort();
    if names.is_empty() {
        bail!(
            "{}: no photos in the {split:?} split",
            dir.join("photos").display()
        );
    }
    Ok(Annotations { names, to_class })
}

/// Share of `results` whose `column` value is among `accepted`.
fn precision(results: &[Recommendation], column: &str, accepted: &[&str], k: usize) -> f64 {
    let hits = results
        .iter()
        .take(k)
        .filter(|r| {
            r.metadata
                .get(column)
                .and_then(|v| v.as_str())
                .is_some_and(|v| accepted.contains(&v))
        })
        .count();
    hits as f64 / k as f64
}

/// Measures every photo of `split` in `dir`.
#[allow(clippy::too_many_arguments)]
pub fn measure(
    outfits: &Outfits,
    parse: &mut ParseSession,
    session: &mut Session,
    table: &Table,
    dir: &Path,
    options: Options,
    split: Split,
    k: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<OutfitFigures> {
    let annotations = read_annotations(dir, outfits, split)?;
    let visual_order = OutfitConfig {
        colour_first: false,
        ..outfits.settings.clone()
    };
    let classes = outfits.parser.manifest().classes.clone();
    let mut tally = Tally {
        per_class: BTreeMap::new(),
        confusion: vec![[0; 3]; classes.len()],
        whole_ms: Vec::new(),
        outfit_ms: Vec::new(),
        not_a_person: 0,
    };
    for (done, name) in annotations.names.iter().enumerate() {
        progress(done, annotations.names.len());
        let (photo, mask) = read_photo(dir, name)?;
        let whole = query::query_image(session, table, &photo, options, k)?;
        tally.whole_ms.push(whole.latency_ms.total);
        let start = Instant::now();
        let predicted = parse_frame(parse, &photo)?;
        // Each garment's visual top `candidates`: its first k are the visual order, and the
        // colour-first order is made from them as the kiosk makes it.
        let outfit = query_parsed(
            &visual_order,
            &predicted,
            &classes,
            session,
            table,
            &photo,
            options,
            outfits.settings.candidates.max(k),
            start,
        )?;
        tally.outfit_ms.push(outfit.latency_ms.total);
        tally.not_a_person += usize::from(outfit.garments.is_empty());
        let truth = truth_in_view(&mask, &predicted, &annotations.to_class);
        tally.count_pixels(&truth, &predicted.labels);
        let looked_up = LookedUp {
            whole: &whole.results,
            garments: &outfit.garments,
            k,
        };
        tally.score_garments(
            &outfits.settings,
            &classes,
            &photo,
            &predicted,
            &truth,
            looked_up,
        );
    }
    progress(annotations.names.len(), annotations.names.len());
    Ok(tally.figures(&classes, annotations.names.len(), split, k))
}

/// A photo and its mask, of the same size.
fn read_photo(dir: &Path, name: &str) -> Result<(RgbImage, GrayImage)> {
    let photo = decode_file(&dir.join("photos").join(format!("{name}.jpg")))?;
    let mask_path = dir.join("masks").join(format!("{name}.png"));
    let mask = image::open(&mask_path)
        .with_context(|| format!("cannot read mask {}", mask_path.display()))?
        .into_luma8();
    ensure!(
        mask.dimensions() == photo.dimensions(),
        "mask {} is {:?}, its photo {:?}",
        mask_path.display(),
        mask.dimensions(),
        photo.dimensions()
    );
    Ok((photo, mask))
}

/// The mask's classes over the parser's view (255: not counted).
fn truth_in_view(mask: &GrayImage, predicted: &LabelMap, to_class: &[u8; 256]) -> Vec<u8> {
    let (vx, vy) = predicted.origin;
    let mut truth = vec![255u8; predicted.labels.len()];
    for y in 0..predicted.height {
        for x in 0..predicted.width {
            let label = mask.get_pixel(vx + x, vy + y).0[0];
            truth[(y * predicted.width + x) as usize] = to_class[label as usize];
        }
    }
    truth
}

/// What one photo's look-ups returned: the whole frame's results and each garment's.
#[derive(Clone, Copy)]
struct LookedUp<'a> {
    whole: &'a [Recommendation],
    garments: &'a [GarmentResult],
    k: usize,
}

/// The counts and sums over the photos measured so far.
struct Tally {
    per_class: BTreeMap<String, ClassFigures>,
    /// Per class: pixels in both truth and prediction, in the truth only, in the prediction only.
    confusion: Vec<[u64; 3]>,
    whole_ms: Vec<f64>,
    outfit_ms: Vec<f64>,
    not_a_person: usize,
}

impl Tally {
    fn count_pixels(&mut self, truth: &[u8], predicted: &[u8]) {
        for (class, counts) in self.confusion.iter_mut().enumerate() {
            for (&t, &p) in truth.iter().zip(predicted) {
                if t == 255 {
                    continue;
                }
                let (t, p) = (t as usize == class, p as usize == class);
                if t && p {
                    counts[0] += 1;
                } else if t {
                    counts[1] += 1;
                } else if p {
                    counts[2] += 1;
                }
            }
        }
    }

    /// Each garment the mask shows (its class configured, at least `min_share` of the view):
    /// the precision of the category and of its colour (from its own pixels) in the results.
    fn score_garments(
        &mut self,
        settings: &OutfitConfig,
        classes: &[String],
        photo: &RgbImage,
        predicted: &LabelMap,
        truth: &[u8],
        looked_up: LookedUp,
    ) {
        let (vx, vy) = predicted.origin;
        let k = looked_up.k;
        for (class_index, class) in classes.iter().enumerate() {
            let Some(garment) = settings.garments.get(class) else {
                continue;
            };
            let pixels: Vec<[u8; 3]> = truth
                .iter()
                .enumerate()
                .filter(|(_, &t)| t as usize == class_index)
                .map(|(i, _)| {
                    let (x, y) = (i as u32 % predicted.width, i as u32 / predicted.width);
                    photo.get_pixel(vx + x, vy + y).0
                })
                .collect();
            if (pixels.len() as f32) < settings.min_share * truth.len() as f32 {
                continue;
            }
            let Some(median) = palette::median_colour(pixels.into_iter()) else {
                continue;
            };
            let colour = palette::name_of(median);
            let categories: Vec<&str> = garment.categories.iter().map(String::as_str).collect();
            let figures = self.per_class.entry(class.clone()).or_default();
            figures.garments += 1;
            figures.whole_category +=
                precision(looked_up.whole, &settings.category_column, &categories, k);
            figures.whole_colour +=
                precision(looked_up.whole, &settings.colour_column, &[colour], k);
            let Some(found) = looked_up.garments.iter().find(|g| g.class == *class) else {
                continue;
            };
            figures.found += 1;
            figures.garment_category +=
                precision(&found.results, &settings.category_column, &categories, k);
            figures.garment_colour_visual +=
                precision(&found.results, &settings.colour_column, &[colour], k);
            let mut colour_first = found.results.clone();
            colour_first.sort_by_key(|r| {
                r.metadata
                    .get(&settings.colour_column)
                    .and_then(|v| v.as_str())
                    != Some(found.colour)
            });
            figures.garment_colour +=
                precision(&colour_first, &settings.colour_column, &[colour], k);
        }
    }

    /// The figures: IoU per class from the pixel counts, precisions as means, median latencies.
    fn figures(
        mut self,
        classes: &[String],
        photos: usize,
        split: Split,
        k: usize,
    ) -> OutfitFigures {
        let mut overall = ClassFigures::default();
        let mut ious = Vec::new();
        for (class_index, class) in classes.iter().enumerate() {
            let [both, truth_only, predicted_only] = self.confusion[class_index];
            let union = both + truth_only + predicted_only;
            let iou = if union > 0 {
                both as f64 / union as f64
            } else {
                f64::NAN
            };
            if class_index >= super::BODY_CLASSES.len() && union > 0 {
                ious.push(iou);
            }
            let Some(figures) = self.per_class.get_mut(class) else {
                continue;
            };
            figures.iou = iou;
            overall.add(figures);
            figures.average();
        }
        overall.average();
        overall.iou = f64::NAN;
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(0.0)
        };
        OutfitFigures {
            photos,
            split,
            k,
            per_class: self.per_class,
            overall,
            garment_miou: ious.iter().sum::<f64>() / ious.len().max(1) as f64,
            not_a_person: self.not_a_person,
            whole_ms: median(self.whole_ms),
            outfit_ms: median(self.outfit_ms),
        }
    }
}

impl std::fmt::Display for OutfitFigures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} photos ({:?} split), P@{}: (a) the whole frame as one query, (b) the parser's garments",
            self.photos, self.split, self.k
        )?;
        writeln!(
            f,
            "{:<12} {:>8} {:>6} {:>8} {:>8} {:>8} {:>8} {:>10} {:>6}",
            "class",
            "garments",
            "found",
            "(a) cat",
            "(a) col",
            "(b) cat",
            "(b) col",
            "(b) col vis",
            "IoU"
        )?;
        let row = |f: &mut std::fmt::Formatter<'_>, name: &str, c: &ClassFigures| {
            writeln!(
                f,
                "{:<12} {:>8} {:>6} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>10.3} {:>6.3}",
                name,
                c.garments,
                c.found,
                c.whole_category,
                c.whole_colour,
                c.garment_category,
                c.garment_colour,
                c.garment_colour_visual,
                c.iou
            )
        };
        for (class, figures) in &self.per_class {
            row(f, class, figures)?;
        }
        row(f, "all garments", &self.overall)?;
        writeln!(
            f,
            "garment mean IoU {:.3}; {} photos not taken for a person; median {:.0} ms whole-frame, {:.0} ms outfit",
            self.garment_miou, self.not_a_person, self.whole_ms, self.outfit_ms
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_split_holds_a_fifth_of_the_names_for_validation_and_the_rest_for_training() {
        let names: Vec<String> = (0..1000).map(|i| format!("{i:04}")).collect();
        let validation = names.iter().filter(|n| Split::Validation.holds(n)).count();
        assert!((150..=250).contains(&validation), "{validation}");
        assert!(names
            .iter()
            .all(|n| Split::Validation.holds(n) != Split::Train.holds(n) && Split::All.holds(n)));
    }

    #[test]
    fn precision_counts_accepted_values_among_the_first_k() {
        let item = |category: &str| Recommendation {
            index: 0,
            id: "1".into(),
            score: 1.0,
            metadata: [("subCategory".to_string(), serde_json::Value::from(category))]
                .into_iter()
                .collect(),
            ranked: None,
        };
        let results = [
            item("Topwear"),
            item("Shoes"),
            item("Topwear"),
            item("Dress"),
        ];
        assert_eq!(precision(&results, "subCategory", &["Topwear"], 4), 0.5);
        assert_eq!(
            precision(&results, "subCategory", &["Topwear", "Dress"], 2),
            0.5
        );
        // Fewer than k results: the missing ones count as misses.
        assert_eq!(
            precision(&results[..1], "subCategory", &["Topwear"], 5),
            0.2
        );
    }
}
