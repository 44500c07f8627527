//! One task of a cluster build: `index --shard I/N` embeds the images of one shard of the
//! catalogue folder into a part file (Parquet) that `merge` joins into the table, with the same
//! steps as a whole table: reuse unchanged images' vectors, skip bad files, refuse to shrink.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Result};

use crate::part::{Part, Skipped};
use crate::shard::Shard;
use kiosk_pipeline::indexer::{
    self, candidates, embed_candidates, IndexReport, PreviousVectors, Shrink,
};
use kiosk_table::labels::Labels;
use kiosk_vision::model::Embedder;

/// What one shard's task should do.
pub struct ShardJob<'a> {
    pub catalogue: &'a Path,
    pub labels: Option<&'a Labels>,
    /// The part file (`.parquet`).
    pub out: &'a Path,
    /// Replace a part at `out` even if it would drop items (see [`indexer::IndexJob`]).
    pub allow_shrink: bool,
    pub show_progress: bool,
    pub shard: Shard,
    /// Only these files of the catalogue folder (names relative to it), not all its images.
    pub files: Option<&'a [String]>,
}

/// Whether `path` names a part file (`.parquet`) rather than a table.
pub fn is_part_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
}

/// Embeds `job.shard`'s images of `job.catalogue` into the part file `job.out`. A previous part
/// there from the same model lends the vectors of unchanged images; a failure never replaces a
/// good part.
pub fn index_shard(embedder: &Embedder, job: &ShardJob) -> Result<IndexReport> {
    let start = Instant::now();
    if !is_part_path(job.out) {
        bail!(
            "a shard writes a part file for merge: give --out a .parquet name, not {}",
            job.out.display()
        );
    }
    let shard = job.shard;
    let mut report = IndexReport::default();
    let mut candidates = candidates(job.catalogue, job.files, &mut report)?;
    candidates.retain(|candidate| shard.takes(&candidate.file_name));
    if shard.index != 0 {
        // Names that cannot be assigned to a shard are reported by the first one.
        report.skipped.clear();
        report.ignored = 0;
    }
    let unnamed = report.skipped.len();
    let (previous, existing_ids) = previous_part(embedder, job.out, shard);
    let embedded = embed_candidates(
        embedder,
        &candidates,
        job.labels,
        &previous,
        job.show_progress,
        &mut report,
    );
    if embedded.is_empty() && !candidates.is_empty() {
        bail!(
            "none of the {} images of shard {shard} could be embedded: {} left unchanged",
            candidates.len(),
            job.out.display()
        );
    }
    if let Some(existing_ids) = existing_ids.filter(|_| !job.allow_shrink) {
        let kept: HashSet<String> = embedded.iter().map(|done| done.item.id.clone()).collect();
        Shrink::of(
            existing_ids,
            &kept,
            report.skipped.len(),
            candidates.len() + unnamed,
        )
        .check(job.out, &job.catalogue.display().to_string())?;
    }
    let mut part = Part {
        fingerprint: embedder.fingerprint(),
        dim: embedder.dim(),
        shard,
        columns: job.labels.map(|l| l.columns.clone()).unwrap_or_default(),
        items: Vec::with_capacity(embedded.len()),
        vectors: Vec::with_capacity(embedded.len() * embedder.dim()),
        skipped: report
            .skipped
            .iter()
            .map(|(path, reason)| Skipped {
                file: path.file_name().map_or_else(
                    || path.display().to_string(),
                    |n| n.to_string_lossy().into(),
                ),
                reason: reason.clone(),
            })
            .collect(),
    };
    for done in embedded {
        part.items.push(done.item);
        part.vectors.extend_from_slice(&done.vector);
    }
    report.items = part.items.len();
    report.embedded = report.items - report.reused.min(report.items);
    indexer::remove_interrupted_writes(job.out);
    part.write(job.out)?;
    report.elapsed = start.elapsed();
    Ok(report)
}

/// The vectors of the part already at `out`, keyed by (source, digest), if it is readable and
/// was made by this model, and the ids of its items if it is the same shard (of a build with
/// another number of shards it holds other images).
fn previous_part(
    embedder: &Embedder,
    out: &Path,
    shard: Shard,
) -> (PreviousVectors, Option<Vec<String>>) {
    if !out.exists() {
        return (HashMap::new(), None);
    }
    let part = match Part::read(out) {
        Ok(part) => part,
        Err(err) => {
            tracing::warn!("{err:#}; re-embedding every image");
            return (HashMap::new(), None);
        }
    };
    let ids =
        (part.shard == shard).then(|| part.items.iter().map(|item| item.id.clone()).collect());
    if part.fingerprint != embedder.fingerprint() {
        tracing::info!(
            "{} was made by another model ({}); re-embedding every image",
            out.display(),
            part.fingerprint.short()
        );
        return (HashMap::new(), ids);
    }
    let vectors = part
        .items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let key = (item.source.clone(), item.digest.clone());
            (key, part.vector(i).to_vec())
        })
        .collect();
    (vectors, ids)
}
