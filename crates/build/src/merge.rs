//! Joining the part files of a sharded catalogue build into one table: every part from the same
//! model, every shard there once, every id once; the items in the folder listing's order, so
//! the table equals what `index` makes of the whole folder on one machine. For an i8 table each
//! part's vectors are quantised as it is read, so only one part is ever held in f32.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Result};

use crate::part::{Part, Skipped};
use kiosk_pipeline::indexer::Shrink;
use kiosk_table::catalogue::{Element, I8Rows, Item, Table, TableBuilder};
use kiosk_vision::preprocess;

/// What `merge` should do.
pub struct MergeJob<'a> {
    pub parts: &'a [PathBuf],
    pub out: &'a Path,
    pub element: Element,
    /// Replace a table at `out` even if it would lose more than a tenth of its items or more than
    /// 1% of the images could not be embedded.
    pub allow_shrink: bool,
    /// An i8 table of at least this many items gets cells and is searched approximately.
    pub approximate_from: usize,
}

/// What `merge` did.
#[derive(Debug)]
pub struct MergeReport {
    pub parts: usize,
    pub items: usize,
    /// The shards' images that could not be embedded.
    pub skipped: Vec<Skipped>,
}

impl std::fmt::Display for MergeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} items from {} parts, {} images skipped by the shards",
            self.items,
            self.parts,
            self.skipped.len()
        )
    }
}

/// How many duplicates, missing shards or mismatches an error lists before "…".
const LISTED: usize = 5;

/// Merges `job.parts` into the table `job.out` (written atomically; left unchanged on any error).
pub fn merge(job: &MergeJob) -> Result<MergeReport> {
    ensure!(!job.parts.is_empty(), "no part files given");
    let mut parts: Vec<Part> = Vec::with_capacity(job.parts.len());
    // For an i8 table: each part's vectors in i8 form, its f32 ones freed as soon as it is read.
    let mut quantized: Vec<I8Rows> = Vec::new();
    for path in job.parts {
        let mut part = Part::read(path)?;
        if job.element == Element::I8 {
            quantized.push(I8Rows::quantize(&part.vectors, part.dim));
            part.vectors = Vec::new();
        }
        parts.push(part);
    }
    check_one_build(&parts, job.parts)?;
    let first = &parts[0];
    check_shards(&parts, job.parts)?;
    // (part, row) of every item, in the folder listing's order.
    let mut order: Vec<(usize, usize)> = parts
        .iter()
        .enumerate()
        .flat_map(|(p, part)| (0..part.items.len()).map(move |r| (p, r)))
        .collect();
    let item = |(p, r): (usize, usize)| &parts[p].items[r];
    check_ids(order.iter().map(|&at| item(at)))?;
    order.sort_by(|&a, &b| preprocess::natural_order(&item(a).source, &item(b).source));
    ensure!(
        !order.is_empty(),
        "the parts hold no items: {} left unchanged",
        job.out.display()
    );
    let skipped: Vec<Skipped> = parts.iter().flat_map(|p| p.skipped.clone()).collect();
    if !job.allow_shrink {
        let kept: HashSet<&str> = order.iter().map(|&at| item(at).id.as_str()).collect();
        check_shrink(job.out, &kept, skipped.len())?;
    }
    let (fingerprint, dim, columns) = (first.fingerprint, first.dim, first.columns.clone());
    let mut builder = if job.element == Element::I8 {
        TableBuilder::new_i8(fingerprint, dim, columns)
    } else {
        TableBuilder::new(fingerprint, dim, columns)
    };
    for &(p, r) in &order {
        // Moved, not copied: the parts' items are not needed again.
        let item = std::mem::take(&mut parts[p].items[r]);
        match quantized.get(p) {
            Some(rows) => builder.push_i8(item, rows, r)?,
            None => builder.push(item, parts[p].vector(r))?,
        }
    }
    let report = MergeReport {
        parts: parts.len(),
        items: order.len(),
        skipped,
    };
    // The parts' vectors are in the builder now: freed before encoding adds the table's bytes.
    drop(quantized);
    drop(parts);
    builder.approximate_from(job.approximate_from);
    builder.write(job.out, job.element)?;
    Ok(report)
}

/// The parts are of one build: one model, one vector size and label columns, one shard count.
fn check_one_build(parts: &[Part], paths: &[PathBuf]) -> Result<()> {
    let first = &parts[0];
    for (part, path) in parts.iter().zip(paths).skip(1) {
        let differs = if part.fingerprint != first.fingerprint {
            Some(format!(
                "was made by model {}, {} by {}",
                part.fingerprint.short(),
                paths[0].display(),
                first.fingerprint.short()
            ))
        } else if part.dim != first.dim || part.columns != first.columns {
            Some(format!(
                "has {}-d vectors and label columns {:?}, {} has {} and {:?}",
                part.dim,
                part.columns,
                paths[0].display(),
                first.dim,
                first.columns
            ))
        } else if part.shard.count != first.shard.count {
            Some(format!(
                "is shard {} but {} is shard {}",
                part.shard,
                paths[0].display(),
                first.shard
            ))
        } else {
            None
        };
        if let Some(differs) = differs {
            bail!("part {} {differs}: not one build", path.display());
        }
    }
    Ok(())
}

/// A table already at `out` keeps its items unless asked: the merged one, holding `kept` (and
/// with `unreadable` images skipped), must not drop too many of them.
fn check_shrink(out: &Path, kept: &HashSet<&str>, unreadable: usize) -> Result<()> {
    let Ok(existing) = Table::load(out) else {
        return Ok(());
    };
    Shrink {
        old_items: existing.len(),
        lost: existing
            .items()
            .iter()
            .filter(|item| !kept.contains(item.id))
            .map(|item| item.id.to_string())
            .collect(),
        unreadable,
        images: kept.len() + unreadable,
    }
    .check(out, "the parts")
}

/// Every shard of the build once.
fn check_shards(parts: &[Part], paths: &[PathBuf]) -> Result<()> {
    let count = parts[0].shard.count;
    let mut by_index: HashMap<u32, &Path> = HashMap::new();
    for (part, path) in parts.iter().zip(paths) {
        if let Some(other) = by_index.insert(part.shard.index, path) {
            bail!(
                "shard {} is given twice: {} and {}",
                part.shard,
                other.display(),
                path.display()
            );
        }
    }
    let missing: Vec<String> = (0..count)
        .filter(|i| !by_index.contains_key(i))
        .map(|i| i.to_string())
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} of the {count} shards are missing: {}{}",
            missing.len(),
            missing[..missing.len().min(LISTED)].join(", "),
            if missing.len() > LISTED { ", …" } else { "" }
        );
    }
    Ok(())
}

/// Every id once across the parts; the error lists duplicates with their image files.
fn check_ids<'a>(items: impl Iterator<Item = &'a Item>) -> Result<()> {
    let mut sources: HashMap<&str, Vec<&str>> = HashMap::new();
    for item in items {
        sources
            .entry(item.id.as_str())
            .or_default()
            .push(item.source.as_str());
    }
    let mut duplicates: Vec<(&str, Vec<&str>)> = sources
        .into_iter()
        .filter(|(_, files)| files.len() > 1)
        .collect();
    if duplicates.is_empty() {
        return Ok(());
    }
    duplicates.sort();
    let listed: Vec<String> = duplicates
        .iter()
        .take(LISTED)
        .map(|(id, files)| format!("{id} ({})", files.join(", ")))
        .collect();
    bail!(
        "{} ids are given to more than one image: {}{}",
        duplicates.len(),
        listed.join("; "),
        if duplicates.len() > LISTED {
            "; …"
        } else {
            ""
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::Shard;
    use kiosk_util::digest::Fingerprint;

    fn part(shard: Shard, names: &[&str]) -> Part {
        let dim = 4;
        Part {
            fingerprint: Fingerprint([3; 32]),
            dim,
            shard,
            columns: vec!["colour".into()],
            items: names
                .iter()
                .map(|name| Item {
                    id: name.trim_end_matches(".jpg").into(),
                    source: name.to_string(),
                    digest: "d".repeat(64),
                    metadata: vec![format!("colour of {name}")],
                })
                .collect(),
            vectors: names
                .iter()
                .flat_map(|name| {
                    let n: f32 = name.trim_end_matches(".jpg").parse().unwrap_or(1.0);
                    [n, 1.0, -n, 0.5]
                })
                .collect(),
            skipped: Vec::new(),
        }
    }

    fn write(dir: &Path, parts: &[Part]) -> Vec<PathBuf> {
        parts
            .iter()
            .map(|part| {
                let path = dir.join(format!("part-{}.parquet", part.shard.index));
                part.write(&path).unwrap();
                path
            })
            .collect()
    }

    fn job<'a>(parts: &'a [PathBuf], out: &'a Path) -> MergeJob<'a> {
        MergeJob {
            parts,
            out,
            element: Element::F32,
            allow_shrink: false,
            approximate_from: kiosk_table::cells::DEFAULT_FROM,
        }
    }

    #[test]
    fn parts_merge_into_one_table_in_the_folders_order() {
        let dir = tempfile::tempdir().unwrap();
        let parts = write(
            dir.path(),
            &[
                part(Shard::new(1, 3).unwrap(), &["10.jpg", "2.jpg"]),
                part(Shard::new(0, 3).unwrap(), &["9.jpg"]),
                part(Shard::new(2, 3).unwrap(), &[]),
            ],
        );
        let out = dir.path().join("table.fkt");
        let report = merge(&job(&parts, &out)).unwrap();
        assert_eq!(report.items, 3);
        let table = Table::load(&out).unwrap();
        let ids: Vec<&str> = table.items().iter().map(|i| i.id).collect();
        assert_eq!(ids, ["2", "9", "10"]);
        assert_eq!(table.columns(), ["colour"]);
        assert_eq!(table.item(2).metadata(0), Some("colour of 10.jpg"));
        assert_eq!(table.vector(1).unwrap(), [9.0, 1.0, -9.0, 0.5]);
    }

    #[test]
    fn a_missing_or_repeated_shard_a_duplicate_id_or_another_model_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("table.fkt");
        let shard = |i| Shard::new(i, 3).unwrap();
        let err = |parts: &[PathBuf]| format!("{:#}", merge(&job(parts, &out)).unwrap_err());

        let parts = write(
            dir.path(),
            &[part(shard(0), &["1.jpg"]), part(shard(2), &["3.jpg"])],
        );
        assert!(err(&parts).contains("1 of the 3 shards are missing: 1"));

        let twice = [parts[0].clone(), parts[0].clone(), parts[1].clone()];
        assert!(err(&twice).contains("shard 0/3 is given twice"));

        let parts = write(
            dir.path(),
            &[
                part(shard(0), &["1.jpg", "7.jpg"]),
                part(shard(1), &["2.jpg"]),
                part(shard(2), &["3.jpg"]),
            ],
        );
        let mut clash = part(shard(1), &["2.jpg", "x.jpg"]);
        clash.items[1].id = "7".into();
        let clash_path = dir.path().join("clash.parquet");
        clash.write(&clash_path).unwrap();
        let message = err(&[parts[0].clone(), clash_path, parts[2].clone()]);
        assert!(
            message.contains("1 ids are given to more than one image: 7 (7.jpg, x.jpg)"),
            "{message}"
        );

        let mut other = part(shard(1), &["2.jpg"]);
        other.fingerprint = Fingerprint([4; 32]);
        let other_path = dir.path().join("other.parquet");
        other.write(&other_path).unwrap();
        let message = err(&[parts[0].clone(), other_path.clone(), parts[2].clone()]);
        assert!(
            message.contains("other.parquet was made by model"),
            "{message}"
        );

        let other_build = part(Shard::new(1, 4).unwrap(), &["2.jpg"]);
        other_build.write(&other_path).unwrap();
        let message = err(&[parts[0].clone(), other_path, parts[2].clone()]);
        assert!(message.contains("is shard 1/4 but"), "{message}");
        assert!(!out.exists(), "nothing written on a refused merge");

        merge(&job(&parts, &out)).unwrap();
        assert_eq!(Table::load(&out).unwrap().len(), 4);
    }

    #[test]
    fn a_merge_that_would_shrink_the_table_is_refused_unless_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("table.fkt");
        let names: Vec<String> = (1..=20).map(|i| format!("{i}.jpg")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let whole = write(dir.path(), &[part(Shard::new(0, 1).unwrap(), &names)]);
        merge(&job(&whole, &out)).unwrap();
        let fewer = write(dir.path(), &[part(Shard::new(0, 1).unwrap(), &names[..15])]);
        let message = format!("{:#}", merge(&job(&fewer, &out)).unwrap_err());
        assert!(
            message.contains("would drop 5 of its 20 items"),
            "{message}"
        );
        let allowed = MergeJob {
            allow_shrink: true,
            approximate_from: kiosk_table::cells::DEFAULT_FROM,
            ..job(&fewer, &out)
        };
        merge(&allowed).unwrap();
        assert_eq!(Table::load(&out).unwrap().len(), 15);
    }
}
