//! Commands this binary forwards to the others, whose code it does not link: `index`, `merge`
//! and `trends` to `fashion-kiosk-build`, `uplink` to `fashion-kiosk-uplink`. The other binary
//! replaces this process (same PID: a unit may run either), found beside this one.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

/// A forwarded command's arguments, passed on as they are (`--help` included).
#[derive(Args)]
#[command(disable_help_flag = true)]
pub struct Forwarded {
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    args: Vec<OsString>,
}

/// The binary that runs `command`, and whether the command's name goes on to it.
fn binary_for(command: &str) -> (&'static str, bool) {
    match command {
        "uplink" => ("fashion-kiosk-uplink", false),
        _ => ("fashion-kiosk-build", true),
    }
}

/// Runs `command` with `forwarded` in the binary that has it; returns only on failure.
pub fn exec(command: &str, forwarded: Forwarded) -> Result<()> {
    let (name, with_command) = binary_for(command);
    let here = std::env::current_exe().context("cannot find this binary's folder")?;
    let binary: PathBuf = here.with_file_name(name);
    if !binary.exists() {
        bail!(
            "`{command}` is done by {name}, which is not installed beside {} (a package or build \
             without it: install it, or run {name} from where it is)",
            here.display()
        );
    }
    let mut run = std::process::Command::new(&binary);
    if with_command {
        run.arg(command);
    }
    let err = run.args(forwarded.args).exec();
    Err(err).with_context(|| format!("cannot run {}", binary.display()))
}
