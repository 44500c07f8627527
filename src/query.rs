//! One look-up: decode an image, embed it, search the table, and time each stage.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use image::RgbImage;
use serde::Serialize;

use crate::catalogue::Table;
use crate::model::Session;
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
    pub preprocess: f64,
    pub embed: f64,
    pub search: f64,
    pub total: f64,
}

/// The answer to one look-up.
#[derive(Debug, Clone, Serialize)]
pub struct QueryResult {
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
    let results = hits
        .iter()
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
        .collect();
    let times = StageTimes {
        preprocess: ms(start, prepared),
        embed: ms(prepared, embedded),
        search: ms(embedded, searched),
    };
    Ok((results, times))
}

/// Milliseconds from `a` to `b`.
pub fn ms(a: Instant, b: Instant) -> f64 {
    (b - a).as_secs_f64() * 1000.0
}

/// Looks up the image at `path` in `table`, returning the `top` best items.
pub fn query_file(
    session: &mut Session,
    table: &Table,
    path: &Path,
    top: usize,
) -> Result<QueryResult> {
    let start = Instant::now();
    let image = decode_file(path)?;
    let decoded = Instant::now();
    let (results, times) = look_up(session, table, &image, Region::Whole, top)?;
    Ok(QueryResult {
        results,
        latency_ms: Latency {
            decode: ms(start, decoded),
            preprocess: times.preprocess,
            embed: times.embed,
            search: times.search,
            total: ms(start, Instant::now()),
        },
    })
}
