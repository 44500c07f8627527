//! `bench`: median/min/max latency of each scan stage (decode + preprocess, embed per model and
//! thread count, search at the table's size), of the foreground step and of each scan path with
//! its test-time augmentations, and peak memory; what is compared runs interleaved in one process
//! so the ratios are fair.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use image::RgbImage;

use crate::query::{query_image, Options};
use kiosk_table::catalogue::Table;
use kiosk_vision::colour::Correction;
use kiosk_vision::foreground::{self, BackgroundModel};
use kiosk_vision::model::Embedder;
use kiosk_vision::preprocess::{decode_file, Region};

/// What to measure.
pub struct BenchJob {
    pub models: Vec<PathBuf>,
    pub table: Option<PathBuf>,
    pub image: PathBuf,
    pub runs: usize,
    pub threads: Vec<usize>,
    /// Also print where each model spends its time, by operator type.
    pub profile: bool,
    /// A camera frame and the empty scene of its camera: time the scan paths on them.
    pub scan: Option<(PathBuf, PathBuf)>,
    /// Also time searches in a synthetic table of this many items made from `table`'s.
    pub search_items: Option<usize>,
    /// Where to keep the synthetic table (default: a temporary file, removed after).
    pub synthetic_out: Option<PathBuf>,
    /// Seed of the synthetic table's jitter and of the search queries.
    pub seed: u64,
    /// Time the searches only: no model is loaded.
    pub search_only: bool,
}

/// Summary of one measured stage.
#[derive(Debug, Clone)]
pub struct Stats {
    pub median: Duration,
    pub min: Duration,
    pub max: Duration,
    pub runs: usize,
}

impl Stats {
    pub fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        let n = samples.len();
        let median = if n % 2 == 1 {
            samples[n / 2]
        } else {
            (samples[n / 2 - 1] + samples[n / 2]) / 2
        };
        Self {
            median,
            min: samples[0],
            max: samples[n - 1],
            runs: n,
        }
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "median {:8.2} ms  min {:8.2}  max {:8.2}  ({} runs)",
            ms(self.median),
            ms(self.min),
            ms(self.max),
            self.runs
        )
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn time<T>(f: impl FnOnce() -> Result<T>) -> Result<(Duration, T)> {
    let start = Instant::now();
    let value = f()?;
    Ok((start.elapsed(), value))
}

/// Runs the benchmark and prints one line per stage.
pub fn run(job: &BenchJob) -> Result<()> {
    ensure!(job.runs >= 1, "--runs must be at least 1");
    ensure!(
        job.search_only || !job.models.is_empty(),
        "give at least one --model"
    );
    ensure!(
        job.table.is_some() || !(job.search_only || job.search_items.is_some()),
        "timing searches needs --table"
    );
    // Read the scan inputs first: a bad file fails at once, not after the model timings.
    let resident_before = resident_kib();
    let table = job.table.as_deref().map(Table::load).transpose()?;
    let table_resident = resident_kib()
        .zip(resident_before)
        .map(|(after, before)| after.saturating_sub(before));
    let scan = match &job.scan {
        Some((frame, reference)) => Some((
            decode_file(frame)?,
            BackgroundModel::from_image(decode_file(reference)?),
        )),
        None => None,
    };
    println!(
        "fashion-kiosk bench: {} runs each, image {}, {} on {}",
        job.runs,
        job.image.display(),
        std::env::consts::ARCH,
        cpu_name()
    );
    if !job.search_only {
        embedding(job, table.as_ref(), scan.as_ref())?;
    }
    if let Some(table) = &table {
        search(table, job.runs, job.seed, table_resident)?;
        if let Some(items) = job.search_items {
            search_at_scale(table, items, job)?;
        }
    }
    if let Some(peak) = peak_rss_kib() {
        println!("{:<44} {:.1} MiB", "peak RSS", peak as f64 / 1024.0);
    }
    Ok(())
}

/// Decoding, preprocessing and embedding by each model and thread count, then the scan paths.
fn embedding(
    job: &BenchJob,
    table: Option<&Table>,
    scan: Option<&(RgbImage, BackgroundModel)>,
) -> Result<()> {
    let embedders: Vec<Embedder> = job
        .models
        .iter()
        .map(|m| Embedder::load(m))
        .collect::<Result<_>>()?;

    // Decode + preprocess with the first model's input spec.
    let mut session = embedders[0].session()?;
    let mut decode = Vec::new();
    let mut preprocess = Vec::new();
    for _ in 0..job.runs {
        let (d, image) = time(|| decode_file(&job.image))?;
        let (p, ()) = time(|| session.preprocess(&image, Region::Whole))?;
        decode.push(d);
        preprocess.push(p);
    }
    println!("{:<44} {}", "decode", Stats::of(decode));
    println!(
        "{:<44} {}",
        "preprocess (crop, resize, normalise)",
        Stats::of(preprocess)
    );

    let image = decode_file(&job.image)?;
    for &threads in &job.threads {
        let executor = kiosk_vision::model::executor(threads);
        let mut sessions: Vec<_> = embedders
            .iter()
            .map(|e| e.session())
            .collect::<Result<_>>()?;
        let mut samples = vec![Vec::new(); embedders.len()];
        tract_linalg::multithread::multithread_tract_scope(executor, || -> Result<()> {
            for session in sessions.iter_mut() {
                session.embed_image(&image, Region::Whole)?; // warm-up
            }
            // Interleave models run by run so both see the same machine state.
            for _ in 0..job.runs {
                for (session, samples) in sessions.iter_mut().zip(samples.iter_mut()) {
                    session.preprocess(&image, Region::Whole)?;
                    let (d, _) = time(|| session.embed_prepared())?;
                    samples.push(d);
                }
            }
            Ok(())
        })?;
        let stats: Vec<Stats> = samples.into_iter().map(Stats::of).collect();
        for (embedder, stats) in embedders.iter().zip(&stats) {
            let label = format!(
                "embed {} ({}, {} thread{})",
                embedder.manifest().name,
                embedder.manifest().precision,
                threads,
                if threads == 1 { "" } else { "s" }
            );
            println!("{label:<44} {stats}");
        }
        // Each later model's median time over the first's: below 1 means faster than the first.
        let (first, base) = (&embedders[0], &stats[0]);
        for (other, stats) in embedders.iter().zip(&stats).skip(1) {
            let label = format!("time {} / {}", other.manifest().name, first.manifest().name);
            println!(
                "{label:<44} {:.2}  ({} thread{})",
                stats.median.as_secs_f64() / base.median.as_secs_f64(),
                threads,
                if threads == 1 { "" } else { "s" }
            );
        }
    }

    if job.profile {
        for embedder in &embedders {
            profile(embedder, &image, job.runs)?;
        }
    }

    if let (Some((frame, reference)), Some(table)) = (scan, table) {
        let threads = job.threads.first().copied().unwrap_or(1);
        scan_paths(&embedders[0], table, frame, reference, job.runs, threads)?;
    }
    Ok(())
}

/// Queries like a camera's: items' vectors with noise of norm 0.75 (a nearest item at cosine
/// ~0.8, as scans find them), seeded.
fn camera_like_queries(table: &Table, count: usize, seed: u64) -> Result<Vec<Vec<f32>>> {
    let mut noise = Noise::seeded(0x5ea2_c4e5, seed);
    (0..count)
        .map(|q| {
            let mut query = table.vector((q * 7919) % table.len())?;
            noise.jitter(&mut query, 0.75);
            Ok(query)
        })
        .collect()
}

/// Times top-5 searches in `table`. Exact ones through its prefilter (where it has one) and by
/// scoring every item, interleaved, checking that both give the same hits; in a table with cells,
/// approximate ones and exact ones, with the share of the exact top 5 the approximate search finds.
/// `resident` is what loading the table added to this process's resident memory, in KiB.
fn search(table: &Table, runs: usize, seed: u64, resident: Option<u64>) -> Result<()> {
    let queries = camera_like_queries(table, runs, seed)?;
    let what = format!("{} items, {}", table.len(), table.element().name());
    let (mut first, mut second, mut scored, mut found) = (Vec::new(), Vec::new(), 0, 0);
    for query in &queries {
        let (d, (hits, counts)) = time(|| table.nearest_counted(query, 5, |_| true))?;
        first.push(d);
        scored += counts.map_or(table.len(), |c| c.scored);
        if table.cell_count().is_some() {
            let (d, (exact, _)) = time(|| table.nearest_exact(query, 5, |_| true))?;
            second.push(d);
            found += hits
                .iter()
                .filter(|h| exact.iter().any(|e| e.index == h.index))
                .count();
        } else {
            let (d, all) = time(|| table.nearest_by_scan(query, 5, |_| true))?;
            second.push(d);
            ensure!(
                hits == all,
                "the prefilter's hits differ from a full scan's"
            );
        }
    }
    let (first, second) = (Stats::of(first), Stats::of(second));
    let ratio = second.median.as_secs_f64() / first.median.as_secs_f64();
    if let Some(cells) = table.cell_count() {
        println!(
            "{:<44} {first}  ({:.0} items scored exactly per search, {cells} cells)",
            format!("search top-5 of {what}, approximate"),
            scored as f64 / queries.len() as f64
        );
        println!(
            "{:<44} {second}  ×{ratio:.1} the time",
            format!("search top-5 of {what}, exact")
        );
        println!(
            "{:<44} {:.3} (seed {seed})",
            "recall@5 of the approximate search",
            found as f64 / (5 * queries.len()) as f64
        );
    } else {
        println!(
            "{:<44} {first}  ({:.0} items scored exactly per search)",
            format!("search top-5 of {what}"),
            scored as f64 / queries.len() as f64
        );
        println!(
            "{:<44} {second}  ×{ratio:.1} the time",
            format!("search top-5 of {what}, every item scored")
        );
    }
    println!(
        "{:<44} {:.0} bytes",
        "vector memory per item",
        table.bytes_per_item()
    );
    if let Some(resident) = resident {
        println!(
            "{:<44} {:.1} MiB ({:.0} bytes per item)",
            "resident memory the loaded table added",
            resident as f64 / 1024.0,
            resident as f64 * 1024.0 / table.len() as f64
        );
    }
    Ok(())
}

/// Builds a table of `items` items: `table`'s, then jittered copies of them (noise of norm 0.5,
/// seeded) with their labels; prints how long that took, and times searches in it.
fn search_at_scale(table: &Table, items: usize, job: &BenchJob) -> Result<()> {
    let (fingerprint, dim, columns) = (table.fingerprint(), table.dim(), table.columns().to_vec());
    let mut builder = if table.element() == kiosk_table::catalogue::Element::I8 {
        kiosk_table::catalogue::TableBuilder::new_i8(fingerprint, dim, columns)
    } else {
        kiosk_table::catalogue::TableBuilder::new(fingerprint, dim, columns)
    };
    let mut noise = Noise::seeded(0x51a7_e7c0, job.seed);
    for i in 0..items {
        let original = table.item(i % table.len());
        let mut vector = table.vector(i % table.len())?;
        let mut item = original.to_item();
        if i >= table.len() {
            noise.jitter(&mut vector, 0.5);
            item.id = format!("{}-{}", original.id, i / table.len());
        }
        builder.push(item, &vector)?;
    }
    let dir = tempfile::tempdir()?;
    let path = job
        .synthetic_out
        .clone()
        .unwrap_or_else(|| dir.path().join("synthetic.fkt"));
    let (built, ()) = time(|| builder.write(&path, table.element()))?;
    drop(builder);
    println!(
        "{:<44} {:.1} s ({})",
        format!("build a table of {items} synthetic items"),
        built.as_secs_f64(),
        path.display()
    );
    if job.synthetic_out.is_some() {
        println!(
            "(its resident memory: `bench --search-only --table {}` in a fresh process; here, \
             memory freed by the build hides it)",
            path.display()
        );
    }
    search(&Table::load(&path)?, job.runs, job.seed, None)
}

/// A seeded source of noise (xorshift): the bench's synthetic items and queries repeat run to run.
struct Noise(u64);

impl Noise {
    /// A stream for one use (`stream`) and one `--seed`.
    fn seeded(stream: u64, seed: u64) -> Self {
        // Mixed so that neighbouring seeds give unrelated streams; never 0, xorshift's fixed point.
        let mixed = (stream ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)).rotate_left(17);
        Self(mixed.max(1))
    }

    fn uniform(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// Adds noise of Euclidean norm `norm` to `vector` and makes it unit length again.
    fn jitter(&mut self, vector: &mut [f32], norm: f32) {
        let noise: Vec<f32> = vector.iter().map(|_| self.uniform()).collect();
        let length = noise
            .iter()
            .map(|v| v * v)
            .sum::<f32>()
            .sqrt()
            .max(f32::MIN_POSITIVE);
        for (v, n) in vector.iter_mut().zip(noise) {
            *v += norm * n / length;
        }
        kiosk_table::catalogue::normalise(vector);
    }
}

/// Times what the foreground step and each test-time augmentation add to a scan: the whole scan
/// (foreground, preprocess, embed, search) of `frame` by each path, interleaved run by run.
fn scan_paths(
    embedder: &Embedder,
    table: &Table,
    frame: &RgbImage,
    reference: &BackgroundModel,
    runs: usize,
    threads: usize,
) -> Result<()> {
    let (mut by_reference, mut alone) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        by_reference.push(time(|| foreground::isolate(frame, reference))?.0);
        alone.push(time(|| Ok(foreground::isolate_without_reference(frame)))?.0);
    }
    println!(
        "{:<44} {}",
        "foreground (difference to the empty scene)",
        Stats::of(by_reference)
    );
    println!(
        "{:<44} {}",
        "foreground without a reference (salient)",
        Stats::of(alone)
    );

    let no_correction = Correction::default();
    let base = Options {
        reference: Some(reference),
        colour: &no_correction,
        region: None,
        flip: false,
        crops: false,
    };
    let paths = [
        (
            "no reference (salient)",
            Options {
                reference: None,
                ..base
            },
        ),
        ("reference", base),
        ("reference + flip", Options { flip: true, ..base }),
        (
            "reference + 5 crops",
            Options {
                crops: true,
                ..base
            },
        ),
        (
            "reference + 5 crops + flip",
            Options {
                crops: true,
                flip: true,
                ..base
            },
        ),
    ];
    let mut session = embedder.session()?;
    let mut samples = vec![Vec::new(); paths.len()];
    tract_linalg::multithread::multithread_tract_scope(
        kiosk_vision::model::executor(threads),
        || -> Result<()> {
            query_image(&mut session, table, frame, base, 5)?; // warm-up
            for _ in 0..runs {
                for ((_, options), samples) in paths.iter().zip(samples.iter_mut()) {
                    let (d, _) = time(|| query_image(&mut session, table, frame, *options, 5))?;
                    samples.push(d);
                }
            }
            Ok(())
        },
    )?;
    let reference_median = Stats::of(samples[1].clone()).median;
    for ((name, _), samples) in paths.iter().zip(samples) {
        let stats = Stats::of(samples);
        let label = format!(
            "scan: {name} ({threads} thread{})",
            if threads == 1 { "" } else { "s" }
        );
        println!(
            "{label:<44} {stats}  ×{:.2} of reference",
            stats.median.as_secs_f64() / reference_median.as_secs_f64()
        );
    }
    Ok(())
}

/// Prints the ten operator types that take the most time in `embedder`, single-threaded.
fn profile(embedder: &Embedder, image: &image::RgbImage, runs: usize) -> Result<()> {
    let mut session = embedder.session()?;
    session.preprocess(image, Region::Whole)?;
    let mut totals = HashMap::new();
    for _ in 0..runs {
        session.profile_prepared(&mut totals)?;
    }
    let mut by_time: Vec<_> = totals.into_iter().collect();
    by_time.sort_by_key(|(_, time)| std::cmp::Reverse(*time));
    let total: Duration = by_time.iter().map(|(_, d)| *d).sum();
    println!(
        "profile {} (1 thread, mean per run):",
        embedder.manifest().name
    );
    for (op, time) in by_time.iter().take(10) {
        println!(
            "  {op:<40} {:8.2} ms  {:5.1}%",
            ms(*time) / runs as f64,
            100.0 * time.as_secs_f64() / total.as_secs_f64()
        );
    }
    Ok(())
}

/// Peak resident set size of this process (Linux), in KiB.
pub fn peak_rss_kib() -> Option<u64> {
    status_kib("VmHWM:")
}

/// Resident set size of this process now (Linux), in KiB.
fn resident_kib() -> Option<u64> {
    status_kib("VmRSS:")
}

fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name") || l.starts_with("Model"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}
