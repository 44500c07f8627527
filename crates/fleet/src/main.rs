//! `fashion-kiosk-uplink`: the kiosk's link to its fleet, as its own service (the scanning service
//! has no network): publishes the scan log and the kiosk's health to the MQTT broker of the
//! config's `[uplink]` until SIGTERM. `fashion-kiosk uplink` runs this binary.

use std::process::ExitCode;

use clap::Parser;

use kiosk_pipeline::args::ConfigArgs;

/// Publishes a fashion kiosk's scans, availability, state and stats to an MQTT broker.
#[derive(Parser)]
#[command(name = "fashion-kiosk-uplink", version, about, long_about)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
}

fn main() -> ExitCode {
    kiosk_util::logging::init();
    let cli = Cli::parse();
    match cli
        .config
        .load()
        .and_then(|config| kiosk_fleet::uplink::run(&config))
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
