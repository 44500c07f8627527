//! The uplink's throughput, memory and delay against a local mosquitto (Debian's):
//! - a backlog of scan log lines published to the broker: scans per second until a subscriber
//!   has them all, median of several runs, and the uplink's peak RSS;
//! - scans logged one at a time while it keeps up: the delay from a line's write to its arrival
//!   at a subscriber, median and 99th percentile.
//!
//!   cargo bench --profile dev --bench uplink -- [BACKLOG] [RUNS] [LIVE]

#[path = "../tests/broker/mod.rs"]
mod broker;
#[allow(dead_code)]
#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant, SystemTime};

use broker::{free_port, Broker, BrokerOptions, Kiosk, Subscriber};

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// Peak resident memory of a process, KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let backlog = args.first().copied().unwrap_or(20_000);
    let runs = args.get(1).copied().unwrap_or(5);
    let live = args.get(2).copied().unwrap_or(500);

    let mut rates = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..runs {
        let port = free_port();
        // 10 MB files, as on the Pi: the backlog spans a few of them.
        let mut kiosk = Kiosk::new(port, "", 10 << 20, 5);
        let broker = Broker::start(kiosk.dir.path(), port, &BrokerOptions::default());
        let subscriber = Subscriber::start(port);
        kiosk.scan(backlog);
        let start = Instant::now();
        let mut uplink = kiosk.start_uplink();
        subscriber.wait_for("the backlog", |s| s.on("test/k1/scans").len() >= backlog);
        let took = start.elapsed().as_secs_f64();
        rates.push(backlog as f64 / took);
        if let Some(kib) = peak_rss_kib(uplink.child.id()) {
            rss.push(kib as f64 / 1024.0);
        }
        uplink.kill("TERM");
        broker.stop();
    }
    println!(
        "backlog of {backlog} scans, {runs} runs: median {:.0} scans/s (runs: {}), peak RSS median {:.1} MiB",
        median(&mut rates),
        rates.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(", "),
        median(&mut rss)
    );

    // Live: one scan every 20 ms, each line's write time against its arrival.
    let port = free_port();
    let mut kiosk = Kiosk::new(port, "", 10 << 20, 5);
    let broker = Broker::start(kiosk.dir.path(), port, &BrokerOptions::default());
    let subscriber = Subscriber::start(port);
    let mut uplink = kiosk.start_uplink();
    subscriber.wait_for("online", |s| !s.on("test/k1/available").is_empty());
    let mut written = Vec::new();
    for _ in 0..live {
        written.push(SystemTime::now());
        kiosk.scan(1);
        std::thread::sleep(Duration::from_millis(20));
    }
    subscriber.wait_for("the live scans", |s| s.on("test/k1/scans").len() >= live);
    let arrivals = subscriber.arrivals("test/k1/scans");
    let mut delays: Vec<f64> = arrivals
        .iter()
        .zip(&written)
        .map(|(arrived, wrote)| {
            arrived
                .duration_since(*wrote)
                .unwrap_or_default()
                .as_secs_f64()
                * 1000.0
        })
        .collect();
    println!(
        "live: {live} scans 20 ms apart: log line to subscriber median {:.1} ms, p99 {:.1} ms, \
         max {:.1} ms; uplink peak RSS {:.1} MiB",
        median(&mut delays),
        percentile(&mut delays, 99.0),
        delays.last().copied().unwrap_or_default(),
        peak_rss_kib(uplink.child.id()).unwrap_or(0) as f64 / 1024.0
    );
    uplink.kill("TERM");
    broker.stop();
}
