//! The `fashion-kiosk` command line: parse and dispatch. The scanning service and its local
//! tools live here; `index`, `merge`, `trends` (`fashion-kiosk-build`) and `uplink`
//! (`fashion-kiosk-uplink`) are binaries of their own, which this one runs for them.

mod forward;
mod lookup;
mod service;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use forward::Forwarded;
use kiosk_pipeline::args::ModelArg;
use lookup::{BenchArgs, EvalArgs, ForegroundArgs, QueryArgs};
use service::{CalibrateArgs, CheckArgs, DemoArgs, RunArgs};

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
    /// Embed every image of a catalogue folder into a table, or one shard into a part file
    /// (`fashion-kiosk-build index`).
    Index(Forwarded),
    /// Join the part files of a sharded build into one table (`fashion-kiosk-build merge`).
    Merge(Forwarded),
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
    /// Co-scan neighbours and popularity from kiosks' scan logs, the sidecar `[recommend] trends`
    /// blends into the ranking (`fashion-kiosk-build trends`).
    Trends(Forwarded),
    /// Publish the scan log and the kiosk's health to an MQTT broker (`[uplink]`), until
    /// SIGTERM: the fleet's link, run as its own service (`fashion-kiosk-uplink`).
    Uplink(Forwarded),
    /// Capture the empty scene (nobody in view) as the reference that finds items in frames.
    Calibrate(CalibrateArgs),
    /// Cut the item out of camera frames as a scan does (by the difference to the empty scene, or
    /// without one by what stands out) and save what would be embedded, to see what the kiosk sees.
    Foreground(ForegroundArgs),
    /// The kiosk in simulation on the bundled demo catalogue (the default).
    Demo(DemoArgs),
}

fn main() -> ExitCode {
    kiosk_vision::model::avoid_slow_int8_kernel();
    kiosk_util::logging::init();
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

fn run(command: Command) -> Result<()> {
    match command {
        Command::Index(args) => forward::exec("index", args),
        Command::Merge(args) => forward::exec("merge", args),
        Command::Trends(args) => forward::exec("trends", args),
        Command::Uplink(args) => forward::exec("uplink", args),
        Command::Query(args) => lookup::cmd_query(args),
        Command::Eval(args) => lookup::cmd_eval(args),
        Command::Bench(args) => lookup::cmd_bench(args),
        Command::Foreground(args) => lookup::cmd_foreground(args),
        Command::Run(args) => kiosk_service::kiosk::run(&args.config.load()?),
        Command::Check(args) => service::cmd_check(args),
        Command::Calibrate(args) => service::cmd_calibrate(args),
        Command::Demo(args) => service::cmd_demo(args),
    }
}
