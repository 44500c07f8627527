//! One look-up: decode an image, embed it, search the table, and time each stage.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
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
    session.preprocess(&image, Region::Whole)?;
    let prepared = Instant::now();
    let vector = session.embed_prepared()?;
    let embedded = Instant::now();
    let hits = table.nearest(&vector, top, None)?;
    let searched = Instant::now();
    let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1000.0;
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
    Ok(QueryResult {
        results,
        latency_ms: Latency {
            decode: ms(start, decoded),
            preprocess: ms(decoded, prepared),
            embed: ms(prepared, embedded),
            search: ms(embedded, searched),
            total: ms(start, searched),
        },
    })
}
