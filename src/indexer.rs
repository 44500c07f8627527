//! Building a catalogue table from a folder of images: embed every image on all cores with a
//! progress bar, skip bad files with one warning each, and re-embed only new or changed images.
//! A table already at the output is only replaced when the new one keeps most of its items and
//! nearly every image could be read, unless the job allows it to shrink.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::catalogue::{Element, Item, Table, TableBuilder};
use crate::labels::Labels;
use crate::model::Embedder;
use crate::preprocess::{self, decode_bytes, Region};

/// What `index` should do.
pub struct IndexJob<'a> {
    pub catalogue: &'a Path,
    pub labels: Option<&'a Labels>,
    pub out: &'a Path,
    pub element: Element,
    /// Replace a table at `out` even if more than 10% of its items would go or more than 1% of
    /// the folder's images could not be read.
    pub allow_shrink: bool,
    pub show_progress: bool,
}

/// The percentage of an existing table's items that a new table may drop without `allow_shrink`.
const MAX_LOST_PERCENT: usize = 10;
/// The percentage of the folder's images that may be unreadable when a table is replaced without
/// `allow_shrink`.
const MAX_UNREADABLE_PERCENT: usize = 1;

/// What `index` did.
#[derive(Debug, Default)]
pub struct IndexReport {
    pub embedded: usize,
    pub reused: usize,
    /// Files that could not be read or decoded, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
    /// Files whose name is not an image's (csv, txt, …), left out silently.
    pub ignored: usize,
    pub items: usize,
    pub elapsed: Duration,
}

impl std::fmt::Display for IndexReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} items ({} embedded, {} unchanged), {} skipped, {} non-image files ignored, {:.1} s",
            self.items,
            self.embedded,
            self.reused,
            self.skipped.len(),
            self.ignored,
            self.elapsed.as_secs_f64()
        )?;
        if self.embedded > 0 {
            write!(
                f,
                " ({:.2} images/s embedded)",
                self.embedded as f64 / self.elapsed.as_secs_f64()
            )?;
        }
        Ok(())
    }
}

struct Candidate {
    path: PathBuf,
    file_name: String,
}

struct Embedded {
    item: Item,
    vector: Vec<f32>,
}

/// Indexes `job.catalogue` into `job.out`. A previous table at `job.out` from the same model lends
/// the vectors of unchanged images. The table is only written if at least one image was embedded
/// or reused, and (see [`IndexJob::allow_shrink`]) if it does not shrink a previous table too
/// much; a failure never replaces a good table.
pub fn index(embedder: &Embedder, job: &IndexJob) -> Result<IndexReport> {
    let start = Instant::now();
    let mut report = IndexReport::default();
    let candidates = list_images(job.catalogue, &mut report)?;
    // Files whose names could not be read: unreadable images too.
    let unnamed = report.skipped.len();
    let existing = existing_table(job);
    let previous = existing
        .as_ref()
        .map(|table| previous_vectors(embedder, job, table))
        .unwrap_or_default();
    let existing_ids: Option<Vec<String>> =
        existing.map(|table| table.items().iter().map(|item| item.id.clone()).collect());
    let columns = job.labels.map(|l| l.columns.clone()).unwrap_or_default();

    let progress = if job.show_progress {
        let bar = ProgressBar::new(candidates.len() as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{bar:40}] {pos}/{len} images, {per_sec}, eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let skipped = Mutex::new(Vec::new());
    let reused = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<Option<Embedded>> = candidates
        .par_iter()
        .map_init(
            || embedder.session(),
            |session, candidate| {
                let outcome = (|| -> Result<Embedded> {
                    let bytes = std::fs::read(&candidate.path).context("cannot read")?;
                    let digest = hex(&Sha256::digest(&bytes));
                    let (id, metadata) = identity(candidate, job.labels, columns.len());
                    let item = Item {
                        id,
                        source: candidate.file_name.clone(),
                        digest,
                        metadata,
                    };
                    if let Some(vector) = previous.get(&(item.source.clone(), item.digest.clone()))
                    {
                        reused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        return Ok(Embedded {
                            item,
                            vector: vector.clone(),
                        });
                    }
                    let image = decode_bytes(&bytes)?;
                    let session = session.as_mut().map_err(|e| anyhow::anyhow!("{e:#}"))?;
                    let vector = session.embed_image(&image, Region::Whole)?;
                    Ok(Embedded { item, vector })
                })();
                progress.inc(1);
                match outcome {
                    Ok(done) => Some(done),
                    Err(err) => {
                        let reason = format!("{err:#}");
                        progress.suspend(|| {
                            tracing::warn!("skipping {}: {reason}", candidate.path.display())
                        });
                        skipped
                            .lock()
                            .expect("not poisoned")
                            .push((candidate.path.clone(), reason));
                        None
                    }
                }
            },
        )
        .collect();
    progress.finish_and_clear();
    report
        .skipped
        .extend(skipped.into_inner().expect("not poisoned"));
    report.skipped.sort();
    let unreadable = report.skipped.len();
    report.reused = reused.into_inner();

    let mut builder = TableBuilder::new(embedder.fingerprint(), embedder.dim(), columns);
    let mut seen = HashSet::new();
    for done in results.into_iter().flatten() {
        if !seen.insert(done.item.id.clone()) {
            tracing::warn!(
                "skipping {}: id {} is already taken by another image",
                done.item.source,
                done.item.id
            );
            report.skipped.push((
                job.catalogue.join(&done.item.source),
                format!("duplicate id {}", done.item.id),
            ));
            continue;
        }
        builder.push(done.item, &done.vector)?;
    }
    if builder.is_empty() {
        bail!(
            "no image in {} could be embedded ({} skipped): {} left unchanged",
            job.catalogue.display(),
            report.skipped.len(),
            job.out.display()
        );
    }
    if let Some(existing_ids) = existing_ids.filter(|_| !job.allow_shrink) {
        Shrink {
            old_items: existing_ids.len(),
            lost: existing_ids
                .into_iter()
                .filter(|id| !seen.contains(id))
                .collect(),
            unreadable,
            images: candidates.len() + unnamed,
        }
        .check(job)?;
    }
    report.items = builder.len();
    report.embedded = report.items - report.reused.min(report.items);
    remove_interrupted_writes(job.out);
    builder.write(job.out, job.element)?;
    report.elapsed = start.elapsed();
    Ok(report)
}

/// Removes the temporary files an `index` killed while writing `out` left beside it (the
/// atomic write's `.NAME.*.tmp`): each is a whole table's size, and nothing else writes them.
fn remove_interrupted_writes(out: &Path) {
    let (Some(dir), Some(name)) = (out.parent(), out.file_name()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!(".{}.", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        if file.starts_with(&prefix) && file.ends_with(".tmp") {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => tracing::info!(
                    "removed {}, left by an interrupted index",
                    entry.path().display()
                ),
                Err(e) => tracing::warn!("cannot remove {}: {e}", entry.path().display()),
            }
        }
    }
}

fn list_images(dir: &Path, report: &mut IndexReport) -> Result<Vec<Candidate>> {
    let listing = preprocess::list_images(dir, "catalogue folder")?;
    report.ignored += listing.ignored;
    for path in listing.bad_names {
        tracing::warn!("skipping {}: file name is not UTF-8", path.display());
        report.skipped.push((path, "file name is not UTF-8".into()));
    }
    Ok(listing
        .images
        .into_iter()
        .map(|(path, file_name)| Candidate { path, file_name })
        .collect())
}

fn identity(
    candidate: &Candidate,
    labels: Option<&Labels>,
    columns: usize,
) -> (String, Vec<String>) {
    let stem = Path::new(&candidate.file_name)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or(&candidate.file_name)
        .to_string();
    match labels.and_then(|l| l.for_file(&candidate.file_name)) {
        Some(row) => (row.id.clone(), row.values.clone()),
        None => (stem, vec![String::new(); columns]),
    }
}

/// What replacing a table would lose.
struct Shrink {
    /// Items of the old table.
    old_items: usize,
    /// Ids of the old table's items that the new one lacks, in the old table's order.
    lost: Vec<String>,
    /// Files of the folder that could not be read or decoded.
    unreadable: usize,
    /// Image files in the folder.
    images: usize,
}

impl Shrink {
    /// Refuses the replacement of the table at `job.out` if it loses more than
    /// [`MAX_LOST_PERCENT`] of its items or more than [`MAX_UNREADABLE_PERCENT`] of the images
    /// could not be read; the error says what would have been lost.
    fn check(&self, job: &IndexJob) -> Result<()> {
        let too_many_lost = self.lost.len() * 100 > MAX_LOST_PERCENT * self.old_items;
        let too_many_unreadable = self.unreadable * 100 > MAX_UNREADABLE_PERCENT * self.images;
        if !too_many_lost && !too_many_unreadable {
            return Ok(());
        }
        const EXAMPLES: usize = 3;
        let examples = match self.lost.len() {
            0 => String::new(),
            n => format!(
                " (e.g. {}{})",
                self.lost[..n.min(EXAMPLES)].join(", "),
                if n > EXAMPLES { ", …" } else { "" }
            ),
        };
        bail!(
            "{} left unchanged: replacing it would drop {} of its {} items{examples}, and {} of the {} images in {} could not be read; give --allow-shrink to replace it anyway",
            job.out.display(),
            self.lost.len(),
            self.old_items,
            self.unreadable,
            self.images,
            job.catalogue.display()
        )
    }
}

/// The table already at `job.out`, if there is one and it is valid.
fn existing_table(job: &IndexJob) -> Option<Table> {
    if !job.out.exists() {
        return None;
    }
    Table::load(job.out)
        .inspect_err(|err| tracing::warn!("{err:#}; re-embedding every image"))
        .ok()
}

/// Vectors of `table` (the one already at `job.out`), keyed by (source, digest), if it was made
/// by this model and stores them at least as precisely as asked for now.
fn previous_vectors(
    embedder: &Embedder,
    job: &IndexJob,
    table: &Table,
) -> HashMap<(String, String), Vec<f32>> {
    if table.fingerprint() != embedder.fingerprint() {
        tracing::info!(
            "{} was built by another model ({}); re-embedding every image",
            job.out.display(),
            table.fingerprint().short()
        );
        return HashMap::new();
    }
    if table.element() != job.element && table.element() != Element::F32 {
        tracing::info!(
            "{} stores {} vectors, {} asked for; re-embedding every image",
            job.out.display(),
            table.element().name(),
            job.element.name()
        );
        return HashMap::new();
    }
    table
        .items()
        .iter()
        .enumerate()
        .map(|(i, item)| ((item.source.clone(), item.digest.clone()), table.vector(i)))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupted_writes_temporary_file_is_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("catalogue.fkt");
        let names = [
            ".catalogue.fkt.a1B2c3.tmp",
            ".catalogue.fkt.zz.tmp",
            ".other.fkt.a1B2c3.tmp",
            "catalogue.fkt",
            ".catalogue.fkt.keep",
        ];
        for name in names {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        remove_interrupted_writes(&out);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                ".catalogue.fkt.keep",
                ".other.fkt.a1B2c3.tmp",
                "catalogue.fkt"
            ]
        );
    }
}
