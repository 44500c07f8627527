//! The look-up commands: `query` images or folders of camera frames, `foreground` (what a scan
//! cuts out), `eval` (label precision, outfits, recommendation rules) and `bench` (each stage's
//! latency).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::ProgressBar;

use kiosk_pipeline::args::ModelArg;
use kiosk_pipeline::config::{Config, OutfitConfig, Overrides};
use kiosk_pipeline::outfit::{self, evaluate::Split, OutfitScanner};
use kiosk_pipeline::pipeline::{Pipeline, Store};
use kiosk_pipeline::query::{self, FoundBy};
use kiosk_pipeline::{bench, evaluate, frames};
use kiosk_table::catalogue::Table;
use kiosk_table::labels::Labels;
use kiosk_util::resources;
use kiosk_vision::calibration::{ColourSettings, SceneFiles};
use kiosk_vision::colour::Correction;
use kiosk_vision::form;
use kiosk_vision::model;
use kiosk_vision::preprocess;

/// Outfits: the garment parser and its settings.
#[derive(Args)]
pub struct OutfitArgs {
    /// With a person in view, look up each garment on its own (the garment parser).
    #[arg(long)]
    pub outfit: bool,
    /// The garment parser's manifest (default: the bundled one); implies --outfit.
    #[arg(long, value_name = "MANIFEST")]
    pub parser: Option<PathBuf>,
    /// Take the `[outfit]` settings from this kiosk config (default: the built-in ones); implies
    /// --outfit.
    #[arg(long, value_name = "CONFIG")]
    pub outfit_config: Option<PathBuf>,
    /// Each garment's results in visual order (`outfit.colour_first = false`).
    #[arg(long)]
    pub visual_order: bool,
}

impl OutfitArgs {
    /// The outfit settings, when outfits are asked for (`always`: they are).
    pub fn settings(&self, always: bool) -> Result<Option<OutfitConfig>> {
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
    pub fn load(&self, always: bool) -> Result<Option<OutfitScanner>> {
        self.settings(always)?
            .map(|settings| OutfitScanner::load(&settings))
            .transpose()
    }
}

#[derive(Args)]
pub struct QueryArgs {
    /// Look up as the kiosk this config describes scans: its model, table, calibration, outfits,
    /// re-ranking and `kiosk.top`, assembled as the service assembles them. The answer is what a
    /// scan of the image logs; the look-up options below are then the config's.
    #[arg(
        long,
        value_name = "CONFIG",
        conflicts_with_all = [
            "table", "flip", "crops", "top", "model", "outfit", "parser", "outfit_config",
            "visual_order", "reference", "reference_dir", "white_patch"
        ]
    )]
    pub config: Option<PathBuf>,
    /// Table made by `index`.
    #[arg(long, value_name = "TABLE", required_unless_present = "config")]
    pub table: Option<PathBuf>,
    /// Image to look up.
    #[arg(
        long,
        value_name = "IMG",
        required_unless_present = "images",
        conflicts_with = "images"
    )]
    pub image: Option<PathBuf>,
    /// Folder of images to look up: one result each (a JSON line with --json), then Recall@1 and
    /// Recall@5 against the item id each file name starts with (up to the first `_`).
    #[arg(long, value_name = "DIR")]
    pub images: Option<PathBuf>,
    #[command(flatten)]
    pub scene: SceneArgs,
    /// Also embed the mirror image and search with the mean (test-time augmentation).
    #[arg(long)]
    pub flip: bool,
    /// Also embed five crops (centre, corners; 80%) and search with the mean (test-time
    /// augmentation).
    #[arg(long)]
    pub crops: bool,
    /// How many items to return.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    /// Print JSON: {"region":…,"results":[{"id","score",…metadata}],"latency_ms":{…}}.
    #[arg(long)]
    pub json: bool,
    /// Threads for the network's matrix products (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub model: ModelArg,
    #[command(flatten)]
    pub outfit: OutfitArgs,
}

/// How camera frames read from files are calibrated, as a kiosk calibrates its camera.
#[derive(Args)]
pub struct SceneArgs {
    /// The empty scene of the camera, for every frame: only what differs from it is embedded (a
    /// kiosk's calibrated reference brings its noise map and white card along).
    #[arg(long, value_name = "IMG", conflicts_with = "reference_dir")]
    pub reference: Option<PathBuf>,
    /// Folder of empty-scene frames named as the frames they belong to.
    #[arg(long, value_name = "DIR")]
    pub reference_dir: Option<PathBuf>,
    /// The empty scene with a matte white card held up in it, under the same light (as the
    /// kiosk's calibration takes it): its colour gains correct the look-up.
    #[arg(long, value_name = "IMG", requires = "reference")]
    pub card: Option<PathBuf>,
    /// Folder of card frames named as the frames they belong to.
    #[arg(long, value_name = "DIR", requires = "reference_dir")]
    pub card_dir: Option<PathBuf>,
    /// A neutral patch in view in every frame, X,Y,W,H: read on each frame to correct colour.
    #[arg(long, value_name = "X,Y,W,H", value_parser = parse_rect)]
    pub white_patch: Option<[u32; 4]>,
    /// What the card's colour becomes after correction (its reflectance × 255).
    #[arg(long, default_value_t = kiosk_vision::colour::DEFAULT_CARD_LEVEL)]
    pub card_level: f32,
}

impl SceneArgs {
    pub fn open(&self) -> Result<SceneFiles> {
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
pub fn parse_rect(text: &str) -> Result<[u32; 4], String> {
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
pub struct ForegroundArgs {
    /// Folder of camera frames.
    #[arg(long, value_name = "DIR")]
    pub images: PathBuf,
    /// Without --reference or --reference-dir, what stands out from the store near the frame's
    /// middle.
    #[command(flatten)]
    pub scene: SceneArgs,
    /// Where to write each frame's cut-out: a PNG named as the frame.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Args)]
pub struct EvalArgs {
    /// Table to evaluate.
    #[arg(long, value_name = "TABLE")]
    pub table: PathBuf,
    /// Labels CSV (by item id).
    #[arg(long, value_name = "CSV", required_unless_present = "outfits")]
    pub labels: Option<PathBuf>,
    /// Instead: a folder of annotated street photos (`photos/`, `masks/`, `labels.txt`, as
    /// `shared/outfits/`): per garment, precision@k of the category and colour for the whole
    /// frame as one query and for the parser's garments, and the parser's IoU.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["recommend", "reference"])]
    pub outfits: Option<PathBuf>,
    /// With --outfits: which photos.
    #[arg(long, value_enum, default_value = "validation")]
    pub split: Split,
    /// With --outfits: threads for the networks (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub model: ModelArg,
    #[command(flatten)]
    pub outfit: OutfitArgs,
    /// Label columns to score, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "articleType,baseColour")]
    pub by: Vec<String>,
    /// Neighbours per query.
    #[arg(long, default_value_t = 5)]
    pub k: usize,
    /// Also report how many of each item's k neighbours in this reference table (same items,
    /// e.g. stored as f32) the evaluated table returns.
    #[arg(long, value_name = "TABLE")]
    pub reference: Option<PathBuf>,
    /// Also: the same items embedded by the model's twin; each item's vector there is a query,
    /// and the share of its k neighbours there that this table returns is reported (a table built
    /// by one form answering the other form's queries).
    #[arg(long, value_name = "TABLE")]
    pub twin: Option<PathBuf>,
    /// Also compare each item's visual list with its re-ranked one under the `[recommend]`
    /// section of this config (label precision, distinct labels, filter violations, time).
    #[arg(long, value_name = "CONFIG")]
    pub recommend: Option<PathBuf>,
    /// With --recommend: scan every Nth item only.
    #[arg(long, default_value_t = 1)]
    pub step: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct BenchArgs {
    /// Model manifests to compare; each later one's time is also given as a ratio to the first's
    /// (default: those installed of the bundled fp32 model, the int8 model's twin and the int8
    /// model).
    #[arg(long = "model", value_name = "MANIFEST")]
    pub models: Vec<PathBuf>,
    /// Table to time searches on.
    #[arg(long, value_name = "TABLE")]
    pub table: Option<PathBuf>,
    /// Image to embed (default: the first demo photo).
    #[arg(long, value_name = "IMG")]
    pub image: Option<PathBuf>,
    /// Runs per measurement.
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// Thread counts for the network's matrix products, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub threads: Vec<usize>,
    /// Also print where each model spends its time, by operator type.
    #[arg(long)]
    pub profile: bool,
    /// A camera frame to time the scan paths on (without a reference; difference to --reference,
    /// without and with each test-time augmentation), with the first model and --table.
    #[arg(long, value_name = "IMG", requires_all = ["reference", "table"])]
    pub frame: Option<PathBuf>,
    /// The empty scene of --frame's camera.
    #[arg(long, value_name = "IMG", requires = "frame")]
    pub reference: Option<PathBuf>,
    /// Also time searches in a synthetic table of N items: the --table's vectors and jittered
    /// copies of them (seeded).
    #[arg(long, value_name = "N", requires = "table")]
    pub search_items: Option<usize>,
    /// Time the searches only (no model is loaded).
    #[arg(long, requires = "table")]
    pub search_only: bool,
    /// Keep the synthetic table of --search-items here (to load it again in a fresh process).
    #[arg(long, value_name = "TABLE", requires = "search_items")]
    pub synthetic_out: Option<PathBuf>,
    /// Seed of the synthetic table's jitter and of the search queries (keep some seeds unseen
    /// while tuning, for a final check).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

pub fn cmd_query(args: QueryArgs) -> Result<()> {
    if let Some(config) = &args.config {
        return query_as_kiosk(config, &args);
    }
    let embedder = args.model.load()?;
    let table_path = args.table.as_deref().context("give --table or --config")?;
    let table = embedder.load_table(table_path)?;
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

/// `query --config`: each image through the kiosk's own pipeline, one result each.
fn query_as_kiosk(path: &Path, args: &QueryArgs) -> Result<()> {
    let config = Config::load(path, &Overrides::default())?;
    let pick = config.model.pick()?;
    let embedder = model::Embedder::load(&pick.manifest)?;
    let table = embedder.load_table(&config.catalogue.table)?;
    let mut pipeline =
        Pipeline::assemble(&config, embedder.session()?, table, &mut Store::default());
    let images = match (&args.image, &args.images) {
        (Some(image), _) => {
            let name = image
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            vec![(image.clone(), name.to_string())]
        }
        (None, Some(dir)) => preprocess::list_images(dir, "image folder")?.images,
        (None, None) => bail!("give --image or --images"),
    };
    let threads = args.threads.unwrap_or_else(|| config.model.thread_count());
    tract_linalg::multithread::multithread_tract_scope(model::executor(threads), || {
        for (image, name) in &images {
            let frame = preprocess::decode_file(image)?;
            let result = pipeline.look_up(&frame)?;
            if args.json {
                println!("{}", result_line(&result, name)?);
            } else {
                print_results(image, &result);
            }
        }
        Ok(())
    })
}

/// A look-up as a JSON line, with the file name of its image.
fn result_line(result: &query::QueryResult, image: &str) -> Result<serde_json::Value> {
    let mut line = serde_json::to_value(result)?;
    line.as_object_mut()
        .expect("a result is an object")
        .insert("image".into(), image.into());
    Ok(line)
}

/// `foreground`: each frame's cut-out as a PNG (colour-corrected as a scan corrects it), one
/// line per frame, then a count of each outcome.
pub fn cmd_foreground(args: ForegroundArgs) -> Result<()> {
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
pub fn query_folder(
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
                let line = result_line(result, name)?;
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

pub fn all_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub fn print_results(image: &Path, result: &query::QueryResult) {
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
pub fn meta_line(r: &query::Recommendation) -> String {
    let meta: Vec<&str> = r
        .metadata
        .values()
        .filter_map(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .collect();
    meta.join(", ")
}

pub fn cmd_eval(args: EvalArgs) -> Result<()> {
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
pub fn eval_outfits(args: &EvalArgs, dir: &Path) -> Result<()> {
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
pub fn eval_recommend(args: &EvalArgs, table: &Table, config: &Path) -> Result<()> {
    use kiosk_pipeline::recommend::{stock::Stock, Recommender};
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

pub fn cmd_bench(args: BenchArgs) -> Result<()> {
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
pub fn first_image(dir: &Path) -> Result<PathBuf> {
    preprocess::list_images(dir, "image folder")?
        .images
        .into_iter()
        .next()
        .map(|(path, _)| path)
        .with_context(|| format!("{} holds no images", dir.display()))
}
