//! One look-up: decode an image, embed it, search the table, and time each stage.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use image::RgbImage;
use serde::Serialize;

use crate::catalogue::{Hit, Table};
use crate::foreground::{self, Foreground};
use crate::model::{normalise, Session};
use crate::preprocess::{decode_file, Region};

/// One recommended item.
#[derive(Debug, Clone, Serialize)]
pub struct Recommendation {
    pub id: String,
    pub score: f32,
    /// Metadata column → value, in table column order.
    #[serde(flatten)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// Milliseconds spent in each stage of a look-up.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub decode: f64,
    /// Finding the item by its difference to the empty scene (0 without a reference).
    pub foreground: f64,
    pub preprocess: f64,
    pub embed: f64,
    pub search: f64,
    pub total: f64,
}

/// The answer to one look-up.
#[derive(Debug, Clone, Serialize)]
pub struct QueryResult {
    /// How the item was found: "reference" (difference to the empty scene), "region" (the
    /// configured part of the frame), "centre" (the centred square of the frame), or "nothing"
    /// (the frame matches the empty scene: no results).
    pub region: &'static str,
    pub results: Vec<Recommendation>,
    pub latency_ms: Latency,
}

/// Milliseconds of the stages after decoding, for one image.
#[derive(Debug, Clone, Default)]
pub struct StageTimes {
    pub preprocess: f64,
    pub embed: f64,
    pub search: f64,
}

/// Embeds `image` (its `region`) and returns the `top` nearest items of `table`, timed per stage.
pub fn look_up(
    session: &mut Session,
    table: &Table,
    image: &RgbImage,
    region: Region,
    top: usize,
) -> Result<(Vec<Recommendation>, StageTimes)> {
    let start = Instant::now();
    session.preprocess(image, region)?;
    let prepared = Instant::now();
    let vector = session.embed_prepared()?;
    let embedded = Instant::now();
    let hits = table.nearest(&vector, top, None)?;
    let searched = Instant::now();
    let times = StageTimes {
        preprocess: ms(start, prepared),
        embed: ms(prepared, embedded),
        search: ms(embedded, searched),
    };
    Ok((recommendations(table, &hits), times))
}

/// The table's items for `hits`, with their metadata.
fn recommendations(table: &Table, hits: &[Hit]) -> Vec<Recommendation> {
    hits.iter()
        .map(|hit| {
            let item = &table.items()[hit.index];
            let metadata = table
                .columns()
                .iter()
                .zip(&item.metadata)
                .map(|(c, v)| (c.clone(), serde_json::Value::String(v.clone())))
                .collect();
            Recommendation {
                id: item.id.clone(),
                score: hit.score,
                metadata,
            }
        })
        .collect()
}

/// Milliseconds from `a` to `b`.
pub fn ms(a: Instant, b: Instant) -> f64 {
    (b - a).as_secs_f64() * 1000.0
}

/// How a frame is turned into the image that is embedded.
#[derive(Clone, Copy)]
pub struct Options<'a> {
    /// The empty scene of the same camera: embed only what differs from it, on white.
    pub reference: Option<&'a RgbImage>,
    /// Without a reference: the part of the frame to embed, `[x, y, width, height]`; without
    /// either, the centred square.
    pub region: Option<[u32; 4]>,
    /// Also embed the mirrored image and average (test-time augmentation).
    pub flip: bool,
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
    let (region, subject, area) = match (options.reference, options.region) {
        (Some(reference), _) => match foreground::isolate(image, reference)? {
            Foreground::Item { image, .. } => {
                ("reference", std::borrow::Cow::Owned(image), Region::Whole)
            }
            Foreground::Nothing { .. } => {
                let total = ms(start, Instant::now());
                return Ok(QueryResult {
                    region: "nothing",
                    results: Vec::new(),
                    latency_ms: Latency {
                        foreground: total,
                        total,
                        ..Latency::default()
                    },
                });
            }
        },
        (None, Some([x, y, width, height])) => (
            "region",
            std::borrow::Cow::Borrowed(image),
            Region::Rect {
                x,
                y,
                width,
                height,
            },
        ),
        (None, None) => ("centre", std::borrow::Cow::Borrowed(image), Region::Whole),
    };
    let isolated = Instant::now();
    let (results, times) = if options.flip {
        look_up_flipped(session, table, &subject, area, top)?
    } else {
        look_up(session, table, &subject, area, top)?
    };
    Ok(QueryResult {
        region,
        results,
        latency_ms: Latency {
            decode: 0.0,
            foreground: ms(start, isolated),
            preprocess: times.preprocess,
            embed: times.embed,
            search: times.search,
            total: ms(start, Instant::now()),
        },
    })
}

/// Like [`look_up`], searching with the mean embedding of the image and its mirror image.
fn look_up_flipped(
    session: &mut Session,
    table: &Table,
    image: &RgbImage,
    region: Region,
    top: usize,
) -> Result<(Vec<Recommendation>, StageTimes)> {
    let mirrored = image::imageops::flip_horizontal(image);
    // The region mirrors with the image.
    let mirrored_region = match region {
        Region::Rect {
            x,
            y,
            width,
            height,
        } => Region::Rect {
            x: image.width().saturating_sub(x + width),
            y,
            width,
            height,
        },
        Region::Whole => Region::Whole,
    };
    let mut times = StageTimes::default();
    let mut vector = vec![0f32; table.dim()];
    for (view, area) in [(image, region), (&mirrored, mirrored_region)] {
        let start = Instant::now();
        session.preprocess(view, area)?;
        let prepared = Instant::now();
        for (v, e) in vector.iter_mut().zip(session.embed_prepared()?) {
            *v += e;
        }
        times.preprocess += ms(start, prepared);
        times.embed += ms(prepared, Instant::now());
    }
    normalise(&mut vector);
    let start = Instant::now();
    let hits = table.nearest(&vector, top, None)?;
    times.search = ms(start, Instant::now());
    Ok((recommendations(table, &hits), times))
}

/// Looks up the image at `path` in `table`, returning the `top` best items.
pub fn query_file(
    session: &mut Session,
    table: &Table,
    path: &Path,
    options: Options,
    top: usize,
) -> Result<QueryResult> {
    let start = Instant::now();
    let image = decode_file(path)?;
    let decoded = Instant::now();
    let mut result = query_image(session, table, &image, options, top)?;
    result.latency_ms.decode = ms(start, decoded);
    result.latency_ms.total = ms(start, Instant::now());
    Ok(result)
}
