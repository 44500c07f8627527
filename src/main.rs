//! The `fashion-kiosk` command line: parse, set up logging, call the library.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::ProgressBar;

use fashion_kiosk::calibration::{Calibration, ColourSettings, SceneFiles};
use fashion_kiosk::catalogue::{Element, Table};
use fashion_kiosk::cells;
use fashion_kiosk::colour::Correction;
use fashion_kiosk::config::{Config, OutfitConfig, Overrides};
use fashion_kiosk::form;
use fashion_kiosk::indexer::{self, IndexJob};
use fashion_kiosk::labels::Labels;
use fashion_kiosk::model::{self, Embedder};
use fashion_kiosk::outfit::{self, evaluate::Split, OutfitScanner};
use fashion_kiosk::preprocess;
use fashion_kiosk::query::FoundBy;
use fashion_kiosk::shard::ShardSpec;
use fashion_kiosk::{bench, check, evaluate, frames, kiosk, merge, query, resources};

/// Fashion recommendations from a camera frame: an int8 ResNet50 in tract and an on-device
/// embedding table of the store's catalogue.
///
/// Without a subcommand, runs the demo: the kiosk in simulation on the bundled demo catalogue
/// (camera = the demo photos, button = Enter, display = the terminal and PNG screens).
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Embed every image of a catalogue folder into a table (only new or changed images are embedded).
    Index(IndexArgs),
    /// Join the part files of a sharded build (`index --shard`) into one table.
    Merge(MergeArgs),
    /// Recommend the catalogue items nearest to an image.
    Query(QueryArgs),
    /// Leave-one-out precision@k of a table per label column.
    Eval(EvalArgs),
    /// Latency of each scan stage per model, and peak memory.
    Bench(BenchArgs),
    /// Run the kiosk service: button → camera → look-up → display, until SIGTERM.
    Run(RunArgs),
    /// Try the model, table, camera, trigger, display and scan log of a config: ok or failing.
    Check(CheckArgs),
    /// Co-scan neighbours and popularity from kiosks' scan logs: the sidecar `[recommend] trends`
    /// blends into the ranking.
    Trends(TrendsArgs),
    /// Publish the scan log and the kiosk's health to an MQTT broker (`[uplink]`), until
    /// SIGTERM: the fleet's link, run as its own service.
    Uplink(UplinkArgs),
    /// Capture the empty scene (nobody in view) as the reference that finds items in frames.
    Calibrate(CalibrateArgs),
    /// Cut the item out of camera frames as a scan does (by the difference to the empty scene, or
    /// without one by what stands out) and save what would be embedded, to see what the kiosk sees.
    Foreground(ForegroundArgs),
    /// The kiosk in simulation on the bundled demo catalogue (the default).
    Demo(DemoArgs),
}

#[derive(Args)]
struct ModelArg {
    /// Model manifest (default: the bundled int8 fashion ResNet50); `auto`: the bundled model or
    /// its fp32 twin, whichever runs faster on this CPU.
    #[arg(long, value_name = "MANIFEST")]
    model: Option<PathBuf>,
}

impl ModelArg {
    /// The manifest given (`auto` resolved for this CPU), else the bundled default.
    fn path(&self) -> Result<PathBuf> {
        Ok(form::resolve(self.model.as_deref())?.manifest)
    }

    fn load(&self) -> Result<Embedder> {
        Embedder::load(&self.path()?)
    }

    /// The model, or its twin where that runs faster on this CPU (logged): what builds a table,
    /// which both read.
    fn load_fastest_form(&self) -> Result<Embedder> {
        let pick = form::pick(&self.path()?, form::has_int8_dot_product())?;
        tracing::info!(
            "embedding with {} ({})",
            pick.manifest.display(),
            pick.reason
        );
        Embedder::load(&pick.manifest)
    }
}

/// Outfits: the garment parser and its settings.
#[derive(Args)]
struct OutfitArgs {
    /// With a person in view, look up each garment on its own (the garment parser).
    #[arg(long)]
    outfit: bool,
    /// The garment parser's manifest (default: the bundled one); implies --outfit.
    #[arg(long, value_name = "MANIFEST")]
    parser: Option<PathBuf>,
    /// Take the `[outfit]` settings from this kiosk config (default: the built-in ones); implies
    /// --outfit.
    #[arg(long, value_name = "CONFIG")]
    outfit_config: Option<PathBuf>,
    /// Each garment's results in visual order (`outfit.colour_first = false`).
    #[arg(long)]
    visual_order: bool,
}

impl OutfitArgs {
    /// The outfit settings, when outfits are asked for (`always`: they are).
    fn settings(&self, always: bool) -> Result<Option<OutfitConfig>> {
        let mut settings = match &self.outfit_config {
            Some(path) => Config::load(path, &Overrides::default())?
                .outfit
                .with_context(|| format!("{}: no [outfit] section", path.display()))?,
            None if always || self.outfit || self.parser.is_some() => OutfitConfig::default(),
            None => return Ok(None),
        };
        if let Some(parser) = &self.parser {
            settings.parser = Some(parser.clone());
        }
        if self.visual_order {
            settings.colour_first = false;
        }
        Ok(Some(settings))
    }

    /// The parser and a session, when outfits are asked for.
    fn load(&self, always: bool) -> Result<Option<OutfitScanner>> {
        self.settings(always)?
            .map(|settings| OutfitScanner::load(&settings))
            .transpose()
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
struct QueryArgs {
    /// Table made by `index`.
    #[arg(long, value_name = "TABLE")]
    table: PathBuf,
    /// Image to look up.
    #[arg(
        long,
        value_name = "IMG",
        required_unless_present = "images",
        conflicts_with = "images"
    )]
    image: Option<PathBuf>,
    /// Folder of images to look up: one result each (a JSON line with --json), then Recall@1 and
    /// Recall@5 against the item id each file name starts with (up to the first `_`).
    #[arg(long, value_name = "DIR")]
    images: Option<PathBuf>,
    #[command(flatten)]
    scene: SceneArgs,
    /// Also embed the mirror image and search with the mean (test-time augmentation).
    #[arg(long)]
    flip: bool,
    /// Also embed five crops (centre, corners; 80%) and search with the mean (test-time
    /// augmentation).
    #[arg(long)]
    crops: bool,
    /// How many items to return.
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// Print JSON: {"region":…,"results":[{"id","score",…metadata}],"latency_ms":{…}}.
    #[arg(long)]
    json: bool,
    /// Threads for the network's matrix products (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    #[command(flatten)]
    model: ModelArg,
    #[command(flatten)]
    outfit: OutfitArgs,
}

/// How camera frames read from files are calibrated, as a kiosk calibrates its camera.
#[derive(Args)]
struct SceneArgs {
    /// The empty scene of the camera, for every frame: only what differs from it is embedded (a
    /// kiosk's calibrated reference brings its noise map and white card along).
    #[arg(long, value_name = "IMG", conflicts_with = "reference_dir")]
    reference: Option<PathBuf>,
    /// Folder of empty-scene frames named as the frames they belong to.
    #[arg(long, value_name = "DIR")]
    reference_dir: Option<PathBuf>,
    /// The empty scene with a matte white card held up in it, under the same light (as the
    /// kiosk's calibration takes it): its colour gains correct the look-up.
    #[arg(long, value_name = "IMG", requires = "reference")]
    card: Option<PathBuf>,
    /// Folder of card frames named as the frames they belong to.
    #[arg(long, value_name = "DIR", requires = "reference_dir")]
    card_dir: Option<PathBuf>,
    /// A neutral patch in view in every frame, X,Y,W,H: read on each frame to correct colour.
    #[arg(long, value_name = "X,Y,W,H", value_parser = parse_rect)]
    white_patch: Option<[u32; 4]>,
    /// What the card's colour becomes after correction (its reflectance × 255).
    #[arg(long, default_value_t = fashion_kiosk::colour::DEFAULT_CARD_LEVEL)]
    card_level: f32,
}

impl SceneArgs {
    fn open(&self) -> Result<SceneFiles> {
        SceneFiles::open(
            self.reference.as_deref(),
            self.card.as_deref(),
            self.reference_dir.clone(),
            self.card_dir.clone(),
            ColourSettings {
                card_level: self.card_level,
                white_patch: self.white_patch,
            },
        )
    }
}

/// Parses `X,Y,W,H`.
fn parse_rect(text: &str) -> Result<[u32; 4], String> {
    let values: Vec<u32> = text
        .split(',')
        .map(|v| v.trim().parse::<u32>())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{text:?}: {e}"))?;
    values
        .try_into()
        .map_err(|_| format!("{text:?}: give four numbers X,Y,W,H"))
}

#[derive(Args)]
struct ForegroundArgs {
    /// Folder of camera frames.
    #[arg(long, value_name = "DIR")]
    images: PathBuf,
    /// Without --reference or --reference-dir, what stands out from the store near the frame's
    /// middle.
    #[command(flatten)]
    scene: SceneArgs,
    /// Where to write each frame's cut-out: a PNG named as the frame.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

#[derive(Args)]
struct EvalArgs {
    /// Table to evaluate.
    #[arg(long, value_name = "TABLE")]
    table: PathBuf,
    /// Labels CSV (by item id).
    #[arg(long, value_name = "CSV", required_unless_present = "outfits")]
    labels: Option<PathBuf>,
    /// Instead: a folder of annotated street photos (`photos/`, `masks/`, `labels.txt`, as
    /// `shared/outfits/`): per garment, precision@k of the category and colour for the whole
    /// frame as one query and for the parser's garments, and the parser's IoU.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["recommend", "reference"])]
    outfits: Option<PathBuf>,
    /// With --outfits: which photos.
    #[arg(long, value_enum, default_value = "validation")]
    split: Split,
    /// With --outfits: threads for the networks (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    #[command(flatten)]
    model: ModelArg,
    #[command(flatten)]
    outfit: OutfitArgs,
    /// Label columns to score, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "articleType,baseColour")]
    by: Vec<String>,
    /// Neighbours per query.
    #[arg(long, default_value_t = 5)]
    k: usize,
    /// Also report how many of each item's k neighbours in this reference table (same items,
    /// e.g. stored as f32) the evaluated table returns.
    #[arg(long, value_name = "TABLE")]
    reference: Option<PathBuf>,
    /// Also: the same items embedded by the model's twin; each item's vector there is a query,
    /// and the share of its k neighbours there that this table returns is reported (a table built
    /// by one form answering the other form's queries).
    #[arg(long, value_name = "TABLE")]
    twin: Option<PathBuf>,
    /// Also compare each item's visual list with its re-ranked one under the `[recommend]`
    /// section of this config (label precision, distinct labels, filter violations, time).
    #[arg(long, value_name = "CONFIG")]
    recommend: Option<PathBuf>,
    /// With --recommend: scan every Nth item only.
    #[arg(long, default_value_t = 1)]
    step: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BenchArgs {
    /// Model manifests to compare; each later one's time is also given as a ratio to the first's
    /// (default: those installed of the bundled fp32 model, the int8 model's twin and the int8
    /// model).
    #[arg(long = "model", value_name = "MANIFEST")]
    models: Vec<PathBuf>,
    /// Table to time searches on.
    #[arg(long, value_name = "TABLE")]
    table: Option<PathBuf>,
    /// Image to embed (default: the first demo photo).
    #[arg(long, value_name = "IMG")]
    image: Option<PathBuf>,
    /// Runs per measurement.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Thread counts for the network's matrix products, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    threads: Vec<usize>,
    /// Also print where each model spends its time, by operator type.
    #[arg(long)]
    profile: bool,
    /// A camera frame to time the scan paths on (without a reference; difference to --reference,
    /// without and with each test-time augmentation), with the first model and --table.
    #[arg(long, value_name = "IMG", requires_all = ["reference", "table"])]
    frame: Option<PathBuf>,
    /// The empty scene of --frame's camera.
    #[arg(long, value_name = "IMG", requires = "frame")]
    reference: Option<PathBuf>,
    /// Also time searches in a synthetic table of N items: the --table's vectors and jittered
    /// copies of them (seeded).
    #[arg(long, value_name = "N", requires = "table")]
    search_items: Option<usize>,
    /// Time the searches only (no model is loaded).
    #[arg(long, requires = "table")]
    search_only: bool,
    /// Keep the synthetic table of --search-items here (to load it again in a fresh process).
    #[arg(long, value_name = "TABLE", requires = "search_items")]
    synthetic_out: Option<PathBuf>,
    /// Seed of the synthetic table's jitter and of the search queries (keep some seeds unseen
    /// while tuning, for a final check).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// The default config path of an installed kiosk.
const DEFAULT_CONFIG: &str = "/etc/fashion-kiosk/kiosk.toml";

#[derive(Args)]
struct ConfigArgs {
    /// The kiosk's TOML config.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Catalogue table (overrides `catalogue.table`).
    #[arg(long, value_name = "TABLE")]
    table: Option<PathBuf>,
    /// Model manifest (overrides `model.manifest`).
    #[arg(long, value_name = "MANIFEST")]
    model: Option<PathBuf>,
    /// Scan log file (overrides `scan_log.path`).
    #[arg(long, value_name = "FILE")]
    scan_log: Option<PathBuf>,
    /// Write every screen as a PNG into DIR (switches to the simulated display).
    #[arg(long, value_name = "DIR")]
    screens: Option<PathBuf>,
}

impl ConfigArgs {
    fn load(&self) -> Result<Config> {
        Config::load(
            &self.config,
            &Overrides {
                table: self.table.clone(),
                model: self.model.clone(),
                scan_log: self.scan_log.clone(),
                screens: self.screens.clone(),
            },
        )
    }
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Args)]
struct CheckArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Print the findings and the kiosk's health as one JSON object (for fleet tooling).
    #[arg(long)]
    json: bool,
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
    similarity: fashion_kiosk::recommend::trends::Similarity,
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

#[derive(Args)]
struct UplinkArgs {
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Args)]
struct CalibrateArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Frames to average (default: scene.calibration_frames).
    #[arg(long)]
    frames: Option<u32>,
    /// After the empty scene, ask for a matte white card to measure the light (default:
    /// scene.card).
    #[arg(long, overrides_with = "no_card")]
    card: bool,
    /// Calibrate the empty scene only.
    #[arg(long)]
    no_card: bool,
    /// Calibrate from picture files of the empty scene instead of the camera.
    #[arg(long, value_name = "IMG", num_args = 1..)]
    empty: Vec<PathBuf>,
    /// With --empty: the same scene with the white card held up, under the same light.
    #[arg(long, value_name = "IMG", requires = "empty")]
    card_image: Option<PathBuf>,
}

#[derive(Args)]
struct DemoArgs {
    /// Where the demo table, screens and scan log go (default: fashion-kiosk-demo in the temp folder).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    #[command(flatten)]
    model: ModelArg,
}

fn main() -> ExitCode {
    fashion_kiosk::model::avoid_slow_int8_kernel();
    init_logging();
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Demo(DemoArgs {
        out: None,
        model: ModelArg { model: None },
    }));
    match run(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FASHION_KIOSK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    if under_journald {
        builder.without_time().init();
    } else {
        builder.init();
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Index(args) => cmd_index(args),
        Command::Merge(args) => cmd_merge(args),
        Command::Query(args) => cmd_query(args),
        Command::Eval(args) => cmd_eval(args),
        Command::Bench(args) => cmd_bench(args),
        Command::Run(args) => kiosk::run(&args.config.load()?),
        Command::Check(args) => cmd_check(args),
        Command::Uplink(args) => cmd_uplink(args),
        Command::Trends(args) => cmd_trends(args),
        Command::Calibrate(args) => cmd_calibrate(args),
        Command::Foreground(args) => cmd_foreground(args),
        Command::Demo(args) => cmd_demo(args),
    }
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
    if let Some(shard) = shard {
        tracing::info!("shard {shard}");
    }
    index(
        &embedder,
        &IndexJob {
            catalogue: &args.catalogue,
            labels: labels.as_ref(),
            out: &args.out,
            element: args.element,
            allow_shrink: args.allow_shrink,
            approximate_from: args.approximate_from,
            show_progress: std::io::stderr().is_terminal(),
            shard,
            files: files.as_deref(),
        },
    )
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

/// Runs an index job and logs what it wrote.
fn index(embedder: &Embedder, job: &IndexJob) -> Result<()> {
    let report = indexer::index(embedder, job)?;
    tracing::info!("wrote {}: {report}", job.out.display());
    Ok(())
}

fn cmd_query(args: QueryArgs) -> Result<()> {
    let embedder = args.model.load()?;
    let table = embedder.load_table(&args.table)?;
    let mut session = embedder.session()?;
    let mut outfit = args.outfit.load(false)?;
    let threads = args.threads.unwrap_or_else(all_cores);
    tract_linalg::multithread::multithread_tract_scope(model::executor(threads), || {
        match (&args.image, &args.images) {
            (Some(image), _) => {
                let scenes = args.scene.open()?;
                let name = image
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default();
                let how = frames::LookUp {
                    flip: args.flip,
                    crops: args.crops,
                    top: args.top,
                };
                let result = frames::look_up_frame(
                    &mut session,
                    &table,
                    image,
                    name,
                    &scenes,
                    how,
                    outfit.as_mut(),
                    |reason| bail!("card refused: {reason}"),
                )?;
                if args.json {
                    println!("{}", serde_json::to_string(&result)?);
                } else {
                    print_results(image, &result);
                }
                Ok(())
            }
            (None, Some(dir)) => query_folder(&mut session, &table, dir, outfit.as_mut(), &args),
            (None, None) => bail!("give --image or --images"),
        }
    })
}

/// `foreground`: each frame's cut-out as a PNG (colour-corrected as a scan corrects it), one
/// line per frame, then a count of each outcome.
fn cmd_foreground(args: ForegroundArgs) -> Result<()> {
    let scenes = args.scene.open()?;
    let by_reference = scenes.shared.is_some() || scenes.reference_dir.is_some();
    let tally = frames::cut_out_folder(
        &args.images,
        &scenes,
        &args.out,
        std::io::stderr().is_terminal(),
        |line, progress| progress.suspend(|| println!("{line}")),
    )?;
    let none = if by_reference {
        "nothing to scan"
    } else {
        "nothing stands out"
    };
    eprintln!(
        "{} frames: {} items cut out, {none} in {}, {} unreadable",
        tally.frames, tally.items, tally.nothing, tally.unreadable
    );
    Ok(())
}

/// `query --images DIR`: every image, then Recall@1/@5 against the id in each file name.
fn query_folder(
    session: &mut model::Session,
    table: &Table,
    dir: &Path,
    outfit: Option<&mut OutfitScanner>,
    args: &QueryArgs,
) -> Result<()> {
    let how = frames::LookUp {
        flip: args.flip,
        crops: args.crops,
        top: args.top,
    };
    let scenes = args.scene.open()?;
    let show_progress = std::io::stderr().is_terminal();
    let recall = frames::look_up_folder(
        session,
        table,
        dir,
        &scenes,
        how,
        outfit,
        show_progress,
        |path, name, result, progress| {
            if args.json {
                let mut line = serde_json::to_value(result)?;
                line.as_object_mut()
                    .expect("a result is an object")
                    .insert("image".into(), name.into());
                progress.suspend(|| println!("{line}"));
            } else {
                progress.suspend(|| print_results(path, result));
            }
            Ok(())
        },
    )?;
    eprintln!(
        "{} images ({} unreadable), top {}: Recall@1 {:.4}, Recall@5 {:.4}; nothing found in {}; {} cards refused; median {:.0} ms per image",
        recall.frames - recall.unreadable,
        recall.unreadable,
        args.top,
        recall.at1_share(),
        recall.at5_share(),
        recall.nothing,
        recall.cards_refused,
        recall.median_ms
    );
    if args.outfit.parser.is_some() || args.outfit.outfit || args.outfit.outfit_config.is_some() {
        eprintln!(
            "{} of them taken for a person: their garments looked up one by one",
            recall.outfits
        );
    }
    Ok(())
}

fn all_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn print_results(image: &Path, result: &query::QueryResult) {
    println!("{}:", image.display());
    for (rank, r) in result.results.iter().enumerate() {
        println!(
            "  {:>2}. {:<10} {:.3}  {}",
            rank + 1,
            r.id,
            r.score,
            meta_line(r)
        );
    }
    for garment in &result.garments {
        let [x, y, w, h] = garment.bbox;
        println!(
            "  {} ({}, {}, {w}x{h}+{x}+{y}, {:.1}% of the view{}):",
            garment.label,
            garment.class,
            garment.colour,
            100.0 * garment.share,
            if garment.cut_by_edge {
                ", cut by the frame's edge"
            } else {
                ""
            }
        );
        for (rank, r) in garment.results.iter().enumerate() {
            println!(
                "    {:>2}. {:<10} {:.3}  {}",
                rank + 1,
                r.id,
                r.score,
                meta_line(r)
            );
        }
    }
    if let Some(note) = &result.note {
        println!("  {note}");
    }
    if result.region == FoundBy::Nothing {
        println!("  nothing differs from the empty scene: no item to look up");
    }
    let l = &result.latency_ms;
    println!(
        "  latency: decode {:.1} ms, parse {:.1} ms, foreground {:.1} ms, preprocess {:.1} ms, embed {:.1} ms, search {:.1} ms, total {:.1} ms",
        l.decode, l.parse, l.foreground, l.preprocess, l.embed, l.search, l.total
    );
}

/// A result's non-empty metadata values, comma-separated.
fn meta_line(r: &query::Recommendation) -> String {
    let meta: Vec<&str> = r
        .metadata
        .values()
        .filter_map(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .collect();
    meta.join(", ")
}

fn cmd_eval(args: EvalArgs) -> Result<()> {
    if let Some(dir) = &args.outfits {
        return eval_outfits(&args, dir);
    }
    let table = Table::load(&args.table)?;
    let labels = Labels::load(args.labels.as_deref().context("give --labels")?)?;
    if let Some(config) = &args.recommend {
        return eval_recommend(&args, &table, config);
    }
    let precision = evaluate::precision_at_k(&table, &labels, &args.by, args.k)?;
    let recall = args
        .reference
        .as_deref()
        .map(|r| evaluate::neighbour_recall(&table, &Table::load(r)?, args.k))
        .transpose()?;
    let twin = args
        .twin
        .as_deref()
        .map(|t| evaluate::twin_agreement(&table, &Table::load(t)?, args.k))
        .transpose()?;
    if args.json {
        let json = serde_json::json!({
            "table": args.table, "items": table.len(), "k": args.k,
            "precision": precision, "neighbour_recall": recall, "twin_agreement": twin,
        });
        println!("{json}");
        return Ok(());
    }
    println!(
        "{}: {} items, {} vectors, leave-one-out",
        args.table.display(),
        table.len(),
        table.element().name()
    );
    for p in &precision {
        println!(
            "  precision@{} {:<14} {:.4}  ({} queries)",
            args.k, p.column, p.precision, p.queries
        );
    }
    if let Some(recall) = recall {
        println!(
            "  neighbour recall@{} against {}: {:.4}",
            args.k,
            args.reference.unwrap().display(),
            recall
        );
    }
    if let Some(agreement) = twin {
        println!(
            "  agreement@{} with the twin's queries and neighbours in {}: {:.4}",
            args.k,
            args.twin.as_deref().expect("given").display(),
            agreement
        );
    }
    Ok(())
}

/// `eval --outfits`: garments of annotated street photos, whole frame against the parser's.
fn eval_outfits(args: &EvalArgs, dir: &Path) -> Result<()> {
    let embedder = args.model.load()?;
    let table = embedder.load_table(&args.table)?;
    let mut session = embedder.session()?;
    let mut scanner = args.outfit.load(true)?.expect("outfits always load here");
    let colour = Correction::default();
    let options = query::Options {
        reference: None,
        colour: &colour,
        region: None,
        flip: false,
        crops: false,
    };
    let progress = if std::io::stderr().is_terminal() {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    let threads = args.threads.unwrap_or_else(all_cores);
    let figures =
        tract_linalg::multithread::multithread_tract_scope(model::executor(threads), || {
            outfit::evaluate::measure(
                &scanner.outfits,
                &mut scanner.parse,
                &mut session,
                &table,
                dir,
                options,
                args.split,
                args.k,
                |done, total| {
                    progress.set_length(total as u64);
                    progress.set_position(done as u64);
                },
            )
        })?;
    progress.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string(&figures)?);
    } else {
        print!("{figures}");
    }
    Ok(())
}

/// `eval --recommend`: the visual lists against the re-ranked ones.
fn eval_recommend(args: &EvalArgs, table: &Table, config: &Path) -> Result<()> {
    use fashion_kiosk::recommend::{stock::Stock, Recommender};
    let config = Config::load(config, &Overrides::default())?;
    let settings = config.recommend.clone().with_context(|| {
        format!(
            "{}: no [recommend] section",
            config.catalogue.table.display()
        )
    })?;
    let stock = settings
        .stock
        .as_deref()
        .map(|path| Stock::load(path, table).map(std::sync::Arc::new))
        .transpose()?;
    let recommender = Recommender::new(settings, table, stock, None);
    let figures = evaluate::rerank(table, &recommender, &args.by, args.k, args.step)?;
    if args.json {
        println!("{}", serde_json::to_string(&figures)?);
        return Ok(());
    }
    println!(
        "{}: {} items scanned (every {}), {} recommendations after the scanned item: visual → re-ranked",
        args.table.display(),
        figures.lists,
        args.step,
        figures.k
    );
    for p in &figures.precision {
        println!(
            "  precision@{} {:<14} {:.4} → {:.4}",
            figures.k, p.column, p.visual, p.ranked
        );
    }
    for d in &figures.distinct {
        println!(
            "  distinct {:<18} {:.2} → {:.2}",
            d.column, d.visual, d.ranked
        );
    }
    println!(
        "  filter violations        {:.4} → {:.4}",
        figures.violations.visual, figures.violations.ranked
    );
    println!(
        "  re-ranking per scan: median {:.3} ms, p99 {:.3} ms",
        figures.rank_ms_median, figures.rank_ms_p99
    );
    Ok(())
}

fn cmd_bench(args: BenchArgs) -> Result<()> {
    let models = if args.models.is_empty() {
        // fp32 first: the ratio lines then read twin time / fp32 time and int8 time / fp32 time.
        // The Pi package ships no plain fp32 model.
        let int8 = resources::locate(resources::DEFAULT_MODEL);
        let fp32 = resources::locate(resources::FP32_MODEL);
        let twin = form::twin(&int8)?;
        [Some(fp32).filter(|path| path.exists()), twin, Some(int8)]
            .into_iter()
            .flatten()
            .collect()
    } else {
        args.models
    };
    let image = match args.image {
        Some(image) => image,
        None => first_image(&resources::locate(resources::DEMO_DIR).join("photos"))?,
    };
    bench::run(&bench::BenchJob {
        models,
        table: args.table,
        image,
        runs: args.runs,
        threads: args.threads,
        profile: args.profile,
        scan: args.frame.zip(args.reference),
        search_items: args.search_items,
        search_only: args.search_only,
        synthetic_out: args.synthetic_out,
        seed: args.seed,
    })
}

/// The first image of `dir`, by the folder-listing rule.
fn first_image(dir: &Path) -> Result<PathBuf> {
    preprocess::list_images(dir, "image folder")?
        .images
        .into_iter()
        .next()
        .map(|(path, _)| path)
        .with_context(|| format!("{} holds no images", dir.display()))
}

fn cmd_check(args: CheckArgs) -> Result<()> {
    let config = args.config.load()?;
    let (findings, health) = check::check(&config);
    if args.json {
        let parts: Vec<serde_json::Value> = findings
            .iter()
            .map(|f| match &f.outcome {
                Ok(detail) => serde_json::json!({"part": f.part, "ok": true, "detail": detail}),
                Err(reason) => serde_json::json!({"part": f.part, "ok": false, "detail": reason}),
            })
            .collect();
        let report = serde_json::json!({
            "ok": findings.iter().all(|f| f.outcome.is_ok()),
            "parts": parts,
            "health": health,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("config     ok    {}", args.config.config.display());
    }
    for f in findings.iter().filter(|_| !args.json) {
        match &f.outcome {
            Ok(detail) => println!("{:<10} ok    {detail}", f.part),
            Err(reason) => println!("{:<10} FAIL  {reason}", f.part),
        }
    }
    let failed = findings.iter().filter(|f| f.outcome.is_err()).count();
    if failed > 0 {
        bail!("{failed} of {} parts failing", findings.len());
    }
    Ok(())
}

fn cmd_trends(args: TrendsArgs) -> Result<()> {
    use fashion_kiosk::recommend::trends::{self, Options, Trends};
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

fn cmd_uplink(args: UplinkArgs) -> Result<()> {
    let config = args.config.load()?;
    fashion_kiosk::uplink::run(&config)
}

fn cmd_calibrate(args: CalibrateArgs) -> Result<()> {
    let config = args.config.load()?;
    let path = config.scene.reference.clone().with_context(|| {
        format!(
            "{}: scene.reference is not set: say where the empty scene is kept",
            args.config.config.display()
        )
    })?;
    let settings = config.scene.colour();
    let calibration = if args.empty.is_empty() {
        let frames = args
            .frames
            .unwrap_or(config.scene.calibration_frames)
            .max(1);
        let card = (config.scene.card || args.card) && !args.no_card;
        kiosk::calibrate_camera(&config, frames, card, |prompt| eprintln!("{prompt}"))?
    } else {
        Calibration::from_files(&args.empty, args.card_image.as_deref(), &settings)?
    };
    calibration.save(&path)?;
    let image = calibration.scene.image();
    println!(
        "calibrated: {} ({}×{}, {} frames averaged)",
        path.display(),
        image.width(),
        image.height(),
        calibration.frames
    );
    for control in &calibration.controls {
        println!("  camera control {} = {}", control.name, control.value);
    }
    if let Some(card) = &calibration.card {
        println!(
            "  white card: {:.1}% of the frame, colour {:.0} {:.0} {:.0}, gains {:.3} {:.3} {:.3}",
            100.0 * card.share,
            card.colour[0],
            card.colour[1],
            card.colour[2],
            card.gains[0],
            card.gains[1],
            card.gains[2]
        );
    }
    Ok(())
}

fn cmd_demo(args: DemoArgs) -> Result<()> {
    let demo = resources::locate(resources::DEMO_DIR);
    let embedder = args.model.load_fastest_form()?;
    let out = args.out.unwrap_or_else(kiosk::demo_output_dir);
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let table = out.join(format!("catalogue-{}.fkt", embedder.fingerprint().short()));
    let labels = Labels::load(&demo.join("labels.csv"))?;
    index(
        &embedder,
        &IndexJob {
            catalogue: &demo.join("catalogue"),
            labels: Some(&labels),
            out: &table,
            element: Element::I8,
            allow_shrink: false,
            approximate_from: cells::DEFAULT_FROM,
            show_progress: std::io::stderr().is_terminal(),
            shard: None,
            files: None,
        },
    )?;
    drop(embedder);
    let config = Config::load(
        &demo.join("kiosk.toml"),
        &Overrides {
            table: Some(table),
            model: args.model.model,
            scan_log: Some(out.join("scans.jsonl")),
            screens: Some(out.join("screens")),
        },
    )?;
    eprintln!(
        "Demo kiosk: press Enter to scan the next demo photo (Enter again while results show: what goes with it), Ctrl-D to stop.\n  screens: {}\n  scan log: {}",
        out.join("screens").display(),
        out.join("scans.jsonl").display()
    );
    kiosk::run(&config)
}
