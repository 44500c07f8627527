//! Building a catalogue table from a folder of images: embed every image on all cores with a
//! progress bar, skip bad files with one warning each, and re-embed only new or changed images.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::catalogue::{Element, Item, Table, TableBuilder};
use crate::labels::Labels;
use crate::model::Embedder;
use crate::preprocess::{decode_bytes, is_image_name, Region};

/// What `index` should do.
pub struct IndexJob<'a> {
    pub catalogue: &'a Path,
    pub labels: Option<&'a Labels>,
    pub out: &'a Path,
    pub element: Element,
    pub show_progress: bool,
}

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
/// or reused; a failure never replaces a good table.
pub fn index(embedder: &Embedder, job: &IndexJob) -> Result<IndexReport> {
    let mut report = IndexReport::default();
    let candidates = list_images(job.catalogue, &mut report)?;
    let previous = previous_vectors(embedder, job);
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
    report.skipped = skipped.into_inner().expect("not poisoned");
    report.skipped.sort();
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
    report.items = builder.len();
    report.embedded = report.items - report.reused.min(report.items);
    builder.write(job.out, job.element)?;
    Ok(report)
}

fn list_images(dir: &Path, report: &mut IndexReport) -> Result<Vec<Candidate>> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read catalogue folder {}", dir.display()))?;
    let mut candidates = Vec::new();
    for entry in entries {
        let entry =
            entry.with_context(|| format!("cannot read catalogue folder {}", dir.display()))?;
        let Ok(file_name) = entry.file_name().into_string() else {
            report
                .skipped
                .push((entry.path(), "file name is not UTF-8".into()));
            continue;
        };
        if file_name.starts_with('.') || !entry.path().is_file() {
            continue;
        }
        if is_image_name(Path::new(&file_name)) {
            candidates.push(Candidate {
                path: entry.path(),
                file_name,
            });
        } else {
            report.ignored += 1;
        }
    }
    candidates.sort_by(|a, b| natural_key(&a.file_name).cmp(&natural_key(&b.file_name)));
    Ok(candidates)
}

/// Orders `9.jpg` before `10.jpg`.
fn natural_key(name: &str) -> (u64, &str) {
    let stem = Path::new(name)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or(name);
    (stem.parse().unwrap_or(u64::MAX), name)
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

/// Vectors of the table already at `job.out`, keyed by (source, digest), if it was made by this
/// model and stores them at least as precisely as asked for now.
fn previous_vectors(embedder: &Embedder, job: &IndexJob) -> HashMap<(String, String), Vec<f32>> {
    if !job.out.exists() {
        return HashMap::new();
    }
    let table = match Table::load(job.out) {
        Ok(table) => table,
        Err(err) => {
            tracing::warn!("{err:#}; re-embedding every image");
            return HashMap::new();
        }
    };
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
