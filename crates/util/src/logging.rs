//! Logging for every binary: `tracing` to stderr, journald-friendly.

use std::io::IsTerminal;

/// Logs to stderr at `info` (or as `FASHION_KIOSK_LOG` says, in `tracing`'s filter syntax),
/// without timestamps under journald, which adds its own.
pub fn init() {
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
