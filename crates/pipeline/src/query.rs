//! One look-up: decode an image, embed it, search the table, and time each stage.

use std::borrow::Cow;
use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::outfit::{GarmentResult, OutfitScanner};
use crate::recommend::{Ranked, Recommender};
use kiosk_table::catalogue::normalise;
use kiosk_table::catalogue::{Hit, Table};
use kiosk_vision::colour::{self, Correction};
use kiosk_vision::foreground::{self, BackgroundModel, Foreground};
use kiosk_vision::model::Session;
use kiosk_vision::preprocess::{decode_file, region_bounds, Region};

/// One recommended item.
#[derive(Debug, Clone, Serialize)]
pub struct Recommendation {
    /// Its position in the table.
    #[serde(skip)]
    pub index: usize,
    pub id: String,
    /// Cosine similarity to what was embedded.
    pub score: f32,
    /// Metadata column → value, in table column order.
    #[serde(flatten)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Where a re-ranked item came from and what its relevance is made of.
    #[serde(flatten)]
    pub ranked: Option<Ranked>,
}

/// Milliseconds spent in each stage of a look-up.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub decode: f64,
    /// Parsing the frame into garments (0 without a garment parser).
    pub parse: f64,
    /// Finding the item in the frame (by its difference to the empty scene, or without one by
    /// what stands out; 0 for a configured region).
    pub foreground: f64,
    pub preprocess: f64,
    pub embed: f64,
    pub search: f64,
    /// Re-ranking the visual candidates into recommendations (0 without `[recommend]`).
    pub rank: f64,
    pub total: f64,
}

/// How the item was found in a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FoundBy {
    /// Its difference to the empty scene.
    Reference,
    /// The configured part of the frame.
    Region,
    /// What stands out from the store around it (without a reference).
    Salient,
    /// The centred square of the frame (nothing stands out, or a studio shot).
    Centre,
    /// The frame matches the empty scene: nothing to look up.
    Nothing,
    /// A person in view: each garment was looked up on its own.
    Outfit,
}

impl FoundBy {
    /// The name in JSON and logs.
    pub fn name(self) -> &'static str {
        match self {
            FoundBy::Reference => "reference",
            FoundBy::Region => "region",
            FoundBy::Salient => "salient",
            FoundBy::Centre => "centre",
            FoundBy::Nothing => "nothing",
            FoundBy::Outfit => "outfit",
        }
    }
}

/// The answer to one look-up.
#[derive(Debug, Clone, Serialize)]
pub struct QueryResult {
    /// How the item was found (JSON: "reference", "region", "salient", "centre", "nothing" or
    /// "outfit").
    pub region: FoundBy,
    /// The colour correction applied to what was embedded.
    pub colour: colour::Applied,
    pub results: Vec<Recommendation>,
    /// With a person in view (`region` "outfit"): each garment found and its own results.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub garments: Vec<GarmentResult>,
    /// Why an outfit scan fell back to the whole frame (a person but no garment found).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub latency_ms: Latency,
    /// The embedding searched with (unit norm; empty when nothing was embedded).
    #[serde(skip)]
    pub vector: Vec<f32>,
}

/// Milliseconds of the stages after decoding, for one image.
#[derive(Debug, Clone, Default)]
pub struct StageTimes {
    pub preprocess: f64,
    pub embed: f64,
    pub search: f64,
}

/// The table's items for `hits`, with their metadata.
pub fn recommendations(table: &Table, hits: &[Hit]) -> Vec<Recommendation> {
    hits.iter().map(|hit| recommendation(table, *hit)).collect()
}

/// The table's item at `hit`, with its metadata.
pub fn recommendation(table: &Table, hit: Hit) -> Recommendation {
    let item = table.item(hit.index);
    let metadata = table
        .columns()
        .iter()
        .zip(item.metadata_values())
        .map(|(c, v)| (c.clone(), serde_json::Value::String(v.to_string())))
        .collect();
    Recommendation {
        index: hit.index,
        id: item.id.to_string(),
        score: hit.score,
        metadata,
        ranked: None,
    }
}

/// Re-ranks a look-up's visual candidates into at most `top` recommendations by `recommender`'s
/// rules; returns the milliseconds it took.
pub fn recommend(
    table: &Table,
    recommender: &Recommender,
    result: &mut QueryResult,
    top: usize,
) -> f64 {
    let start = Instant::now();
    let hits: Vec<Hit> = result
        .results
        .iter()
        .map(|r| Hit {
            index: r.index,
            score: r.score,
        })
        .collect();
    result.results = recommender
        .rank(table, &result.vector, &hits, top)
        .into_iter()
        .map(|ranked| Recommendation {
            ranked: Some(ranked.clone()),
            ..recommendation(
                table,
                Hit {
                    index: ranked.index,
                    score: ranked.visual,
                },
            )
        })
        .collect();
    ms(start, Instant::now())
}

/// Milliseconds from `a` to `b`.
pub fn ms(a: Instant, b: Instant) -> f64 {
    (b - a).as_secs_f64() * 1000.0
}

/// How a frame is turned into the image that is embedded.
#[derive(Clone, Copy)]
pub struct Options<'a> {
    /// The empty scene of the same camera: embed only what differs from it, on white.
    pub reference: Option<&'a BackgroundModel>,
    /// How colour is corrected to the catalogue's studio light (white card, white patch).
    pub colour: &'a Correction,
    /// Without a reference: the part of the frame to embed, `[x, y, width, height]`; without
    /// either, what stands out from the background near the middle of the frame (else the centred
    /// square).
    pub region: Option<[u32; 4]>,
    /// Also embed the mirrored image and average (test-time augmentation).
    pub flip: bool,
    /// Also embed five crops of the item (centre and corners, each 80% of its width and height)
    /// and average (test-time augmentation).
    pub crops: bool,
}

/// Side of each multi-crop view, as a share of the item's width and height.
const CROP_SHARE: f64 = 0.8;

/// What a scan embeds of a frame: found, cut out and colour-corrected as `options` say.
#[derive(Debug)]
pub struct Subject<'a> {
    /// How the item was found; [`FoundBy::Nothing`] when the frame matches the empty scene
    /// (then there is nothing to embed).
    pub path: FoundBy,
    /// The picture to embed (the item on white, or the frame itself)…
    pub image: Cow<'a, RgbImage>,
    /// …and the part of it.
    pub area: Region,
    /// The colour correction applied to it.
    pub colour: colour::Applied,
    /// Where the item was in the frame (x, y, width, height), when it was cut out.
    pub bbox: Option<(u32, u32, u32, u32)>,
}

/// Finds what to embed of `frame`: by its difference to the empty scene, the configured region,
/// or what stands out (else the centred square), then corrects its colour.
pub fn subject<'a>(frame: &'a RgbImage, options: &Options) -> Result<Subject<'a>> {
    // The frame's light relative to the empty scene's, where the scene says it.
    let mut drift = [1.0; 3];
    let mut bbox = None;
    let (path, mut image, area) = match (options.reference, options.region) {
        (Some(reference), _) => match foreground::isolate(frame, reference)? {
            Foreground::Item {
                image,
                gains,
                bbox: found,
                ..
            } => {
                drift = gains;
                bbox = Some(found);
                (FoundBy::Reference, Cow::Owned(image), Region::Whole)
            }
            Foreground::Nothing { .. } => (FoundBy::Nothing, Cow::Borrowed(frame), Region::Whole),
        },
        (None, Some([x, y, width, height])) => (
            FoundBy::Region,
            Cow::Borrowed(frame),
            Region::Rect {
                x,
                y,
                width,
                height,
            },
        ),
        (None, None) => match foreground::isolate_without_reference(frame) {
            Foreground::Item {
                image, bbox: found, ..
            } => {
                bbox = Some(found);
                (FoundBy::Salient, Cow::Owned(image), Region::Whole)
            }
            Foreground::Nothing { .. } => (FoundBy::Centre, Cow::Borrowed(frame), Region::Whole),
        },
    };
    let colour = options.colour.gains_for(frame, drift);
    if path != FoundBy::Nothing && colour.source != colour::Source::None {
        colour::correct(image.to_mut(), colour.gains);
    }
    Ok(Subject {
        path,
        image,
        area,
        colour,
        bbox,
    })
}

/// Looks up `image` (already decoded) in `table`, returning the `top` best items.
pub fn query_image(
    session: &mut Session,
    table: &Table,
    image: &RgbImage,
    options: Options,
    top: usize,
) -> Result<QueryResult> {
    let start = Instant::now();
    let subject = subject(image, &options)?;
    let isolated = Instant::now();
    if subject.path == FoundBy::Nothing {
        let total = ms(start, isolated);
        return Ok(QueryResult {
            region: subject.path,
            colour: subject.colour,
            results: Vec::new(),
            garments: Vec::new(),
            note: None,
            latency_ms: Latency {
                foreground: total,
                total,
                ..Latency::default()
            },
            vector: Vec::new(),
        });
    }
    let (results, vector, times) =
        look_up(session, table, &subject.image, subject.area, options, top)?;
    Ok(QueryResult {
        region: subject.path,
        colour: subject.colour,
        results,
        garments: Vec::new(),
        note: None,
        latency_ms: Latency {
            decode: 0.0,
            parse: 0.0,
            foreground: ms(start, isolated),
            preprocess: times.preprocess,
            embed: times.embed,
            search: times.search,
            rank: 0.0,
            total: ms(start, Instant::now()),
        },
        vector,
    })
}

/// Embeds `image` (its `region`) and returns the `top` nearest items of `table`, timed per stage.
/// With `options.crops` or `options.flip` it searches with the mean embedding of several views:
/// the region, its five crops, and the mirror image of each.
pub fn look_up(
    session: &mut Session,
    table: &Table,
    image: &RgbImage,
    region: Region,
    options: Options,
    top: usize,
) -> Result<(Vec<Recommendation>, Vec<f32>, StageTimes)> {
    let (vector, mut times) = embed(session, table.dim(), image, region, options)?;
    let start = Instant::now();
    let hits = table.nearest(&vector, top, None)?;
    times.search = ms(start, Instant::now());
    Ok((recommendations(table, &hits), vector, times))
}

/// The unit-norm embedding of `image` (its `region`; with `options.crops` or `options.flip` the
/// mean of several views), with the time spent preprocessing and embedding.
pub fn embed(
    session: &mut Session,
    dim: usize,
    image: &RgbImage,
    region: Region,
    options: Options,
) -> Result<(Vec<f32>, StageTimes)> {
    let mut areas = vec![region];
    if options.crops {
        areas.extend(five_crops(region_bounds(image, region)?));
    }
    let mirrored = options
        .flip
        .then(|| image::imageops::flip_horizontal(image));
    let mut views: Vec<(&RgbImage, Region)> = areas.iter().map(|&area| (image, area)).collect();
    if let Some(mirrored) = &mirrored {
        // Each area mirrors with the image.
        let width = image.width();
        views.extend(areas.iter().map(|&area| (mirrored, mirror(area, width))));
    }
    let mut times = StageTimes::default();
    let mut vector = vec![0f32; dim];
    for (view, area) in views {
        let start = Instant::now();
        session.preprocess(view, area)?;
        let prepared = Instant::now();
        // Each view's embedding has unit norm: each counts the same.
        for (v, e) in vector.iter_mut().zip(session.embed_prepared()?) {
            *v += e;
        }
        times.preprocess += ms(start, prepared);
        times.embed += ms(prepared, Instant::now());
    }
    normalise(&mut vector);
    Ok((vector, times))
}

/// `region` of an image `width` pixels wide, in the image's mirror image.
fn mirror(region: Region, width: u32) -> Region {
    match region {
        Region::Rect {
            x,
            y,
            width: w,
            height,
        } => Region::Rect {
            x: width.saturating_sub(x + w),
            y,
            width: w,
            height,
        },
        Region::Whole => Region::Whole,
    }
}

/// The centre and the four corners of the area `(x, y, width, height)`, each [`CROP_SHARE`] of its
/// width and height.
fn five_crops((x, y, width, height): (u32, u32, u32, u32)) -> [Region; 5] {
    let w = ((width as f64 * CROP_SHARE).round() as u32).max(1);
    let h = ((height as f64 * CROP_SHARE).round() as u32).max(1);
    let (right, bottom) = (x + width - w, y + height - h);
    let at = |x, y| Region::Rect {
        x,
        y,
        width: w,
        height: h,
    };
    [
        at(x + (width - w) / 2, y + (height - h) / 2),
        at(x, y),
        at(right, y),
        at(x, bottom),
        at(right, bottom),
    ]
}

/// Looks up the image at `path` in `table`, returning the `top` best items; with `outfit`, each
/// garment of a person in view (see [`crate::outfit::query_frame`]).
pub fn query_file(
    session: &mut Session,
    table: &Table,
    path: &Path,
    options: Options,
    top: usize,
    outfit: Option<&mut OutfitScanner>,
) -> Result<QueryResult> {
    let start = Instant::now();
    let image = decode_file(path)?;
    let decoded = Instant::now();
    let mut result = match outfit {
        Some(outfit) => outfit.query(session, table, &image, options, top)?,
        None => query_image(session, table, &image, options, top)?,
    };
    result.latency_ms.decode = ms(start, decoded);
    result.latency_ms.total = ms(start, Instant::now());
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mirrored_region_covers_the_same_pixels_of_the_mirror_image() {
        let region = Region::Rect {
            x: 10,
            y: 5,
            width: 30,
            height: 20,
        };
        assert_eq!(
            mirror(region, 100),
            Region::Rect {
                x: 60,
                y: 5,
                width: 30,
                height: 20
            }
        );
        assert_eq!(mirror(mirror(region, 100), 100), region);
        assert_eq!(mirror(Region::Whole, 100), Region::Whole);
    }

    #[test]
    fn five_crops_lie_inside_the_area_at_its_centre_and_corners() {
        let crops = five_crops((10, 20, 100, 50));
        let rects: Vec<_> = crops
            .iter()
            .map(|r| match *r {
                Region::Rect {
                    x,
                    y,
                    width,
                    height,
                } => (x, y, width, height),
                Region::Whole => panic!("a crop is a rectangle"),
            })
            .collect();
        assert_eq!(
            rects,
            [
                (20, 25, 80, 40),
                (10, 20, 80, 40),
                (30, 20, 80, 40),
                (10, 30, 80, 40),
                (30, 30, 80, 40)
            ]
        );
        // A one-pixel area still gives valid one-pixel crops.
        assert!(five_crops((0, 0, 1, 1)).iter().all(|r| *r
            == Region::Rect {
                x: 0,
                y: 0,
                width: 1,
                height: 1
            }));
    }
}
