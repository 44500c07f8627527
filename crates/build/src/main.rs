//! `fashion-kiosk-build`: building the catalogue on one machine or many — `index` (a table, or
//! one shard's part file), `merge` (the parts into a table) and `trends` (co-scans from the
//! kiosks' scan logs). `fashion-kiosk index|merge|trends` runs this binary.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use kiosk_build::merge;
use kiosk_build::shard::{Shard, ShardSpec};
use kiosk_build::shards::{self, ShardJob};
use kiosk_pipeline::args::ModelArg;
use kiosk_pipeline::indexer::{self, IndexJob};
use kiosk_table::catalogue::{Element, Table};
use kiosk_table::cells;
use kiosk_table::labels::Labels;

/// Builds fashion-kiosk catalogue tables, on one machine or as the shards of a cluster job.
#[derive(Parser)]
#[command(name = "fashion-kiosk-build", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Embed every image of a catalogue folder into a table (only new or changed images are embedded).
    Index(IndexArgs),
    /// Join the part files of a sharded build (`index --shard`) into one table.
    Merge(MergeArgs),
    /// Co-scan neighbours and popularity from kiosks' scan logs: the sidecar `[recommend] trends`
    /// blends into the ranking.
    Trends(TrendsArgs),
}

fn main() -> ExitCode {
    kiosk_vision::model::avoid_slow_int8_kernel();
    kiosk_util::logging::init();
    let result = match Cli::parse().command {
        Command::Index(args) => cmd_index(args),
        Command::Merge(args) => cmd_merge(args),
        Command::Trends(args) => cmd_trends(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Args)]
struct IndexArgs {
    /// Folder of catalogue images (JPEG, PNG, WebP).
    #[arg(long, value_name = "DIR")]
    catalogue: PathBuf,
    /// CSV with an `id` column (and optionally `filename`); other columns become metadata.
    #[arg(long, value_name = "CSV")]
    labels: Option<PathBuf>,
    /// Table file to write (replaced atomically; its unchanged vectors are reused), or a part
    /// file for `merge` if its name ends in `.parquet`.
    #[arg(long, value_name = "TABLE")]
    out: PathBuf,
    /// Embed only shard I of N (0-based; a file's shard is fixed by its name) into the part file
    /// --out NAME.parquet. `auto`: I and N from a Slurm job array (SLURM_ARRAY_TASK_ID,
    /// SLURM_ARRAY_TASK_COUNT); `auto/N`: I from SLURM_ARRAY_TASK_ID or a Kubernetes Indexed
    /// Job's JOB_COMPLETION_INDEX.
    #[arg(long, value_name = "I/N")]
    shard: Option<ShardSpec>,
    /// Only the files this list names (a name per line, relative to --catalogue; `-`: stdin),
    /// not every image of the folder.
    #[arg(long, value_name = "FILE")]
    files_from: Option<PathBuf>,
    /// How vectors are stored.
    #[arg(long, value_enum, default_value_t = Element::I8)]
    element: Element,
    /// Replace the table at --out even if more than 10% of its items would go or more than 1% of
    /// the folder's images cannot be read (otherwise refused, leaving it unchanged).
    #[arg(long)]
    allow_shrink: bool,
    /// Embed with the model itself, even where its twin (named in its manifest: the same network
    /// computed in another precision) runs faster on this CPU. By default the faster of the two
    /// embeds (the int8 model's fp32 twin on x86 and a Pi 4); the table serves both models.
    #[arg(long)]
    no_twin: bool,
    /// An i8 table of this many items or more is built with cells (k-means over its items) and
    /// searched approximately: the items of the nearest few cells are ranked by short codes and
    /// the best 256 scored exactly. Smaller tables are searched exactly.
    #[arg(long, value_name = "ITEMS", default_value_t = cells::DEFAULT_FROM)]
    approximate_from: usize,
    #[command(flatten)]
    model: ModelArg,
}

#[derive(Args)]
struct MergeArgs {
    /// Part files written by `index --shard I/N --out PART.parquet`, one per shard.
    #[arg(required = true, value_name = "PART")]
    parts: Vec<PathBuf>,
    /// Table file to write (replaced atomically).
    #[arg(long, value_name = "TABLE")]
    out: PathBuf,
    /// How vectors are stored.
    #[arg(long, value_enum, default_value_t = Element::I8)]
    element: Element,
    /// Replace the table at --out even if more than 10% of its items would go or more than 1% of
    /// the images could not be embedded.
    #[arg(long)]
    allow_shrink: bool,
    /// An i8 table of this many items or more is built with cells (k-means over its items) and
    /// searched approximately: the items of the nearest few cells are ranked by short codes and
    /// the best 256 scored exactly. Smaller tables are searched exactly.
    #[arg(long, value_name = "ITEMS", default_value_t = cells::DEFAULT_FROM)]
    approximate_from: usize,
}

#[derive(Args)]
struct TrendsArgs {
    /// The table the kiosks search (the sidecar is tied to it).
    #[arg(long, value_name = "TABLE")]
    table: PathBuf,
    /// Scan logs, one per kiosk (each with its rotated files LOG.1 … beside it).
    #[arg(long, value_name = "LOG", num_args = 1.., required = true)]
    logs: Vec<PathBuf>,
    /// The sidecar to write.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Scans further apart than this start a new session, minutes.
    #[arg(long, default_value_t = 10.0)]
    session_gap_mins: f64,
    /// A session this many days older than the newest scan counts half.
    #[arg(long, default_value_t = 30.0)]
    half_life_days: f64,
    /// Pair score.
    #[arg(long, value_enum, default_value = "jaccard")]
    similarity: kiosk_pipeline::recommend::trends::Similarity,
    /// Neighbours kept per item.
    #[arg(long, default_value_t = 20)]
    neighbours: usize,
    /// Held-out scan logs: print Recall@5 of each session's next scan for the visual, co-scan,
    /// popular and blended lists.
    #[arg(long, value_name = "LOG", num_args = 1..)]
    held_out: Vec<PathBuf>,
    /// The blend's co-scan weight for --held-out (as recommend.co_scan_weight).
    #[arg(long, default_value_t = 0.3)]
    weight: f32,
}

fn cmd_index(args: IndexArgs) -> Result<()> {
    // What is asked is checked before the model loads (seconds), so a bad shard fails at once.
    let shard = args
        .shard
        .map(|spec| spec.resolve(|name| std::env::var(name).ok()))
        .transpose()?;
    let files = args.files_from.as_deref().map(read_file_list).transpose()?;
    let labels = args.labels.as_deref().map(Labels::load).transpose()?;
    let embedder = if args.no_twin {
        args.model.load()?
    } else {
        args.model.load_fastest_form()?
    };
    let show_progress = std::io::stderr().is_terminal();
    // A shard, or a whole folder written to a `.parquet` name, makes a part file for `merge`.
    let shard = match shard {
        Some(shard) => Some(shard),
        None if shards::is_part_path(&args.out) => Some(Shard::new(0, 1)?),
        None => None,
    };
    let report = match shard {
        Some(shard) => {
            tracing::info!("shard {shard}");
            shards::index_shard(
                &embedder,
                &ShardJob {
                    catalogue: &args.catalogue,
                    labels: labels.as_ref(),
                    out: &args.out,
                    allow_shrink: args.allow_shrink,
                    show_progress,
                    shard,
                    files: files.as_deref(),
                },
            )?
        }
        None => indexer::index(
            &embedder,
            &IndexJob {
                catalogue: &args.catalogue,
                labels: labels.as_ref(),
                out: &args.out,
                element: args.element,
                allow_shrink: args.allow_shrink,
                approximate_from: args.approximate_from,
                show_progress,
                files: files.as_deref(),
            },
        )?,
    };
    tracing::info!("wrote {}: {report}", args.out.display());
    Ok(())
}

/// The lines of a file list (`-`: stdin).
fn read_file_list(path: &Path) -> Result<Vec<String>> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("cannot read the file list from stdin")?
    } else {
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the file list {}", path.display()))?
    };
    Ok(text.lines().map(str::to_string).collect())
}

fn cmd_merge(args: MergeArgs) -> Result<()> {
    let report = merge::merge(&merge::MergeJob {
        parts: &args.parts,
        out: &args.out,
        element: args.element,
        allow_shrink: args.allow_shrink,
        approximate_from: args.approximate_from,
    })?;
    for skipped in &report.skipped {
        tracing::warn!("skipped by its shard: {}: {}", skipped.file, skipped.reason);
    }
    tracing::info!("wrote {}: {report}", args.out.display());
    Ok(())
}

fn cmd_trends(args: TrendsArgs) -> Result<()> {
    use kiosk_pipeline::recommend::trends::{self, Options, Trends};
    let table = Table::load(&args.table)?;
    let read = |paths: &[PathBuf]| -> Result<Vec<Vec<trends::Scan>>> {
        paths
            .iter()
            .map(|path| {
                let (scans, bad) = trends::read_log(path)?;
                if bad > 0 {
                    tracing::warn!(
                        "{}: {bad} lines are not scan records: skipped",
                        path.display()
                    );
                }
                Ok(scans)
            })
            .collect()
    };
    let options = Options {
        session_gap_secs: args.session_gap_mins * 60.0,
        half_life_days: args.half_life_days,
        similarity: args.similarity,
        neighbours: args.neighbours,
    };
    options
        .validate()
        .context("--session-gap-mins or --half-life-days")?;
    let histories = read(&args.logs)?;
    let built = trends::build(&histories, &table, options, &args.out)?;
    println!(
        "{}: {} sessions, {} scans, {} items, {} item pairs (from {} logs)",
        args.out.display(),
        built.sessions,
        built.scans,
        built.items,
        built.pairs,
        args.logs.len()
    );
    if !args.held_out.is_empty() {
        let held_out = read(&args.held_out)?;
        let sidecar = std::sync::Arc::new(Trends::load(&args.out, &table)?);
        let recall = trends::next_scan_recall(
            &table,
            &sidecar,
            &held_out,
            std::time::Duration::from_secs_f64(options.session_gap_secs),
            5,
            args.weight,
        )?;
        println!(
            "held out: {} next scans; Recall@{} visual {:.4}, co-scan {:.4}, popular {:.4}, blend (weight {}) {:.4}",
            recall.pairs, recall.k, recall.visual, recall.co_scan, recall.popular, args.weight, recall.blend
        );
    }
    Ok(())
}
