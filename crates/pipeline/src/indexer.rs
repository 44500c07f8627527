//! Building a catalogue table from a folder of images: embed every image on all cores with a
//! progress bar, skip bad files with one warning each, and re-embed only new or changed images.
//! A table already at the output is only replaced when the new one keeps most of its items and
//! nearly every image could be read, unless the job allows it to shrink. On a cluster each task
//! embeds one shard of the folder into a part file instead (`kiosk-build`), with the same steps.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use kiosk_table::catalogue::{Element, Item, Table, TableBuilder};
use kiosk_table::labels::Labels;
use kiosk_vision::model::Embedder;
use kiosk_vision::preprocess::{self, decode_bytes, Region};

/// What `index` should do.
pub struct IndexJob<'a> {
    pub catalogue: &'a Path,
    pub labels: Option<&'a Labels>,
    pub out: &'a Path,
    pub element: Element,
    /// Replace a table at `out` even if more than 10% of its items would go or more than 1% of
    /// the folder's images could not be read.
    pub allow_shrink: bool,
    /// An i8 table of at least this many items gets cells and is searched approximately.
    pub approximate_from: usize,
    pub show_progress: bool,
    /// Only these files of the catalogue folder (names relative to it), not all its images.
    pub files: Option<&'a [String]>,
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

/// An image file of the catalogue folder.
pub struct Candidate {
    pub path: PathBuf,
    pub file_name: String,
}

/// An image's item and its vector.
pub struct Embedded {
    pub item: Item,
    pub vector: Vec<f32>,
}

/// The images of `catalogue` (or only `files` of it) in the folder listing's order; names that
/// are not images are counted, unreadable names reported, in `report`.
pub fn candidates(
    catalogue: &Path,
    files: Option<&[String]>,
    report: &mut IndexReport,
) -> Result<Vec<Candidate>> {
    match files {
        Some(files) => Ok(listed_files(catalogue, files, report)),
        None => list_images(catalogue, report),
    }
}

/// Embeds `candidates` on all cores (behind a progress bar with `show_progress`), taking the
/// vector of an unchanged image from `previous`; an image that cannot be read or decoded is
/// skipped with one warning and reported in `report`, as is how many vectors were reused.
pub fn embed_candidates(
    embedder: &Embedder,
    candidates: &[Candidate],
    labels: Option<&Labels>,
    previous: &PreviousVectors,
    show_progress: bool,
    report: &mut IndexReport,
) -> Vec<Embedded> {
    let columns = labels.map_or(0, |l| l.columns.len());
    let progress = progress_bar(candidates.len(), show_progress);
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
                    let (id, metadata) = identity(candidate, labels, columns);
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
    report.reused = reused.into_inner();
    results.into_iter().flatten().collect()
}

fn progress_bar(len: usize, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} images, {per_sec}, eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar
}

/// Indexes `job.catalogue` into `job.out`. A previous table at `job.out` from the same model lends
/// the vectors of unchanged images. The table is only written if at least one image was embedded
/// or reused, and (see [`IndexJob::allow_shrink`]) if it does not shrink a previous table too
/// much; a failure never replaces a good table.
pub fn index(embedder: &Embedder, job: &IndexJob) -> Result<IndexReport> {
    let start = Instant::now();
    let mut report = IndexReport::default();
    let candidates = candidates(job.catalogue, job.files, &mut report)?;
    // Files whose names could not be read: unreadable images too.
    let unnamed = report.skipped.len();
    let existing = existing_table(job);
    let previous = existing
        .as_ref()
        .map(|table| previous_vectors(embedder, job, table))
        .unwrap_or_default();
    let existing_ids: Option<Vec<String>> =
        existing.map(|table| table.items().iter().map(|i| i.id.to_string()).collect());
    let columns = job.labels.map(|l| l.columns.clone()).unwrap_or_default();
    let embedded = embed_candidates(
        embedder,
        &candidates,
        job.labels,
        &previous,
        job.show_progress,
        &mut report,
    );
    let unreadable = report.skipped.len();

    let mut builder = if job.element == Element::I8 {
        TableBuilder::new_i8(embedder.fingerprint(), embedder.dim(), columns)
    } else {
        TableBuilder::new(embedder.fingerprint(), embedder.dim(), columns)
    };
    let mut seen = HashSet::new();
    for done in embedded {
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
        Shrink::of(existing_ids, &seen, unreadable, candidates.len() + unnamed)
            .check(job.out, &job.catalogue.display().to_string())?;
    }
    report.items = builder.len();
    report.embedded = report.items - report.reused.min(report.items);
    remove_interrupted_writes(job.out);
    builder.approximate_from(job.approximate_from);
    builder.write(job.out, job.element)?;
    report.elapsed = start.elapsed();
    Ok(report)
}

/// Removes the temporary files an `index` killed while writing `out` left beside it (the
/// atomic write's `.NAME.*.tmp`): each is a whole table's size, and nothing else writes them.
pub fn remove_interrupted_writes(out: &Path) {
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

/// The images among `files` (names in the catalogue folder `dir`, or paths through it as
/// given), once each, in the folder listing's order. A missing file is skipped when it is read.
fn listed_files(dir: &Path, files: &[String], report: &mut IndexReport) -> Vec<Candidate> {
    let prefix = format!("{}/", dir.display());
    let mut names = HashSet::new();
    let mut candidates = Vec::new();
    for entry in files.iter().map(|f| f.trim()).filter(|f| !f.is_empty()) {
        let name = entry.strip_prefix(&prefix).unwrap_or(entry);
        if name.contains('/') || name == ".." || name == "." {
            tracing::warn!("skipping {entry}: not a file of {}", dir.display());
            report.skipped.push((
                PathBuf::from(entry),
                format!("not a file of {}", dir.display()),
            ));
            continue;
        }
        if !preprocess::is_image_name(Path::new(name)) {
            report.ignored += 1;
            continue;
        }
        if names.insert(name.to_string()) {
            candidates.push(Candidate {
                path: dir.join(name),
                file_name: name.to_string(),
            });
        }
    }
    candidates.sort_by(|a, b| preprocess::natural_order(&a.file_name, &b.file_name));
    candidates
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
pub struct Shrink {
    /// Items of the old table.
    pub old_items: usize,
    /// Ids of the old table's items that the new one lacks, in the old table's order.
    pub lost: Vec<String>,
    /// Files of the folder that could not be read or decoded.
    pub unreadable: usize,
    /// Image files in the folder.
    pub images: usize,
}

impl Shrink {
    /// What replacing an output of `old_ids` by one of the `kept` ids loses, with `unreadable`
    /// of the folder's `images` not read.
    pub fn of(
        old_ids: Vec<String>,
        kept: &HashSet<String>,
        unreadable: usize,
        images: usize,
    ) -> Self {
        Shrink {
            old_items: old_ids.len(),
            lost: old_ids
                .into_iter()
                .filter(|id| !kept.contains(id))
                .collect(),
            unreadable,
            images,
        }
    }

    /// Refuses the replacement of the table (or part) at `out` if it loses more than
    /// [`MAX_LOST_PERCENT`] of its items or more than [`MAX_UNREADABLE_PERCENT`] of the images
    /// (from `images_from`) could not be read; the error says what would have been lost.
    pub fn check(&self, out: &Path, images_from: &str) -> Result<()> {
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
            "{} left unchanged: replacing it would drop {} of its {} items{examples}, and {} of the {} images in {images_from} could not be read; give --allow-shrink to replace it anyway",
            out.display(),
            self.lost.len(),
            self.old_items,
            self.unreadable,
            self.images,
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

/// Vectors embedded before, keyed by (source file, its digest).
pub type PreviousVectors = HashMap<(String, String), Vec<f32>>;

/// Vectors of `table` (the one already at `job.out`), keyed by (source, digest), if it was made
/// by this model and stores them at least as precisely as asked for now.
fn previous_vectors(embedder: &Embedder, job: &IndexJob, table: &Table) -> PreviousVectors {
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
        .filter_map(|(i, item)| {
            let vector = table.vector(i).ok()?;
            Some(((item.source.to_string(), item.digest.to_string()), vector))
        })
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
