//! The service commands: `run` the kiosk, `check` a config's every part, `calibrate` the camera's
//! empty scene, and the `demo` (the kiosk in simulation on the bundled catalogue).

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use kiosk_pipeline::args::{ConfigArgs, ModelArg};
use kiosk_pipeline::config::{Config, Overrides};
use kiosk_pipeline::indexer::{self, IndexJob};
use kiosk_service::{check, kiosk};
use kiosk_table::catalogue::Element;
use kiosk_table::cells;
use kiosk_table::labels::Labels;
use kiosk_util::resources;
use kiosk_vision::calibration::Calibration;

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
}

#[derive(Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Print the findings and the kiosk's health as one JSON object (for fleet tooling).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct CalibrateArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Frames to average (default: scene.calibration_frames).
    #[arg(long)]
    pub frames: Option<u32>,
    /// After the empty scene, ask for a matte white card to measure the light (default:
    /// scene.card).
    #[arg(long, overrides_with = "no_card")]
    pub card: bool,
    /// Calibrate the empty scene only.
    #[arg(long)]
    pub no_card: bool,
    /// Calibrate from picture files of the empty scene instead of the camera.
    #[arg(long, value_name = "IMG", num_args = 1..)]
    pub empty: Vec<PathBuf>,
    /// With --empty: the same scene with the white card held up, under the same light.
    #[arg(long, value_name = "IMG", requires = "empty")]
    pub card_image: Option<PathBuf>,
}

#[derive(Args)]
pub struct DemoArgs {
    /// Where the demo table, screens and scan log go (default: fashion-kiosk-demo in the temp folder).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArg,
}

pub fn cmd_check(args: CheckArgs) -> Result<()> {
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

pub fn cmd_calibrate(args: CalibrateArgs) -> Result<()> {
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

pub fn cmd_demo(args: DemoArgs) -> Result<()> {
    let demo = resources::locate(resources::DEMO_DIR);
    let embedder = args.model.load_fastest_form()?;
    let out = args.out.unwrap_or_else(kiosk::demo_output_dir);
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let table = out.join(format!("catalogue-{}.fkt", embedder.fingerprint().short()));
    let labels = Labels::load(&demo.join("labels.csv"))?;
    let report = indexer::index(
        &embedder,
        &IndexJob {
            catalogue: &demo.join("catalogue"),
            labels: Some(&labels),
            out: &table,
            element: Element::I8,
            allow_shrink: false,
            approximate_from: cells::DEFAULT_FROM,
            show_progress: std::io::stderr().is_terminal(),
            files: None,
        },
    )?;
    tracing::info!("wrote {}: {report}", table.display());
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
