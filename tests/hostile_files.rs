//! Hostile files: every file the kiosk and its tools read from outside (table, Parquet part,
//! config, model and parser manifests, labels and stock CSV, trends sidecar, scan log, uplink
//! checkpoint, calibration record and picture) is mutated from a committed seed corpus
//! (`tests/hostile/corpus/FORMAT/`) by a seeded generator: bit flips, bytes set to edge values,
//! cuts, inserted and repeated runs, numbers made huge, negative or not numbers, and splices of
//! two seeds. Each input must give a value or an error: no panic, no abort, and no single
//! allocation larger than the file justifies (16 bytes per byte of input over a fixed 4 MiB of
//! working buffers; for a picture, what deflate can expand it to, 1,100 to 1, 8 bytes a
//! pixel), measured by a counting allocator.
//!
//! `FASHION_KIOSK_FUZZ_EXECS` sets the executions per format (default 2,000: the short CI run;
//! the long run's figures are in `docs/hostile-files.md`), `FASHION_KIOSK_FUZZ_SEED` the first
//! seed. A failing input is kept as `target/hostile/FORMAT-failed.bin`; the input being read
//! is always `target/hostile/FORMAT/` (so an abort leaves it there). Seeds are regenerated with
//! `cargo test --test hostile_files -- --ignored write_corpus`.

#[allow(dead_code)] // the helpers that start the binary are not used here
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};

use kiosk_build::part::{Part, Skipped};
use kiosk_build::shard::Shard;
use kiosk_fleet::uplink::outbox::{Checkpoint, Outbox};
use kiosk_pipeline::config::Config;
use kiosk_pipeline::recommend::stock::Stock;
use kiosk_pipeline::recommend::trends::{self, Options, Similarity, Trends};
use kiosk_table::catalogue::{Element, Item, Table, TableBuilder};
use kiosk_table::labels::Labels;
use kiosk_util::digest::Fingerprint;
use kiosk_vision::calibration::{Calibration, ColourSettings};
use kiosk_vision::model::Manifest;
use kiosk_vision::parser::ParserManifest;

/// The system allocator, recording the largest single request of each thread.
struct Counting;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded to the system allocator unchanged; the thread-local is a
// `Cell<usize>` with a const initialiser, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The largest allocation an input of `len` bytes justifies.
fn allowance(len: usize) -> usize {
    (4 << 20) + 16 * len
}

/// The largest allocation a compressed picture of `len` bytes justifies.
fn picture_allowance(len: usize) -> usize {
    (4 << 20) + 8 * 1_100 * len
}

/// A small deterministic generator (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const EDGE_BYTES: [u8; 8] = [0, 1, 0x7f, 0x80, 0xff, b'"', b'\n', b'9'];
const EDGE_WORDS: [u64; 7] = [
    0,
    u32::MAX as u64,
    1 << 31,
    u64::MAX,
    20_000_000_000,
    1 << 40,
    0x7ff0_0000_0000_0000,
];
const EDGE_NUMBERS: [&str; 9] = [
    "0",
    "-1",
    "99999999999999999999999",
    "1e309",
    "NaN",
    "inf",
    "4294967296",
    "-9223372036854775809",
    "0.0000001",
];

/// One mutation of `data` (another seed may be spliced in).
fn mutate(data: &mut Vec<u8>, other: &[u8], rng: &mut Rng) {
    let len = data.len();
    match rng.below(9) {
        0 if len > 0 => {
            let at = rng.below(len);
            data[at] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let at = rng.below(len);
            data[at] = EDGE_BYTES[rng.below(EDGE_BYTES.len())];
        }
        2 => data.truncate(rng.below(len + 1)),
        3 => {
            let at = rng.below(len + 1);
            let run: Vec<u8> = (0..1 + rng.below(16)).map(|_| rng.next() as u8).collect();
            data.splice(at..at, run);
        }
        4 if len > 0 => {
            let start = rng.below(len);
            let end = (start + 1 + rng.below(64)).min(len);
            data.drain(start..end);
        }
        5 if len > 0 => {
            let start = rng.below(len);
            let end = (start + 1 + rng.below(256)).min(len);
            let run = data[start..end].to_vec();
            let at = rng.below(len + 1);
            for _ in 0..1 + rng.below(4) {
                data.splice(at..at, run.iter().copied());
            }
        }
        6 => {
            // A run of digits becomes an edge number.
            let digits: Vec<usize> = (0..len).filter(|&i| data[i].is_ascii_digit()).collect();
            if let Some(&start) = digits.get(rng.below(digits.len())) {
                let end = (start..len)
                    .find(|&i| !data[i].is_ascii_digit() && data[i] != b'.')
                    .unwrap_or(len);
                let number = EDGE_NUMBERS[rng.below(EDGE_NUMBERS.len())];
                data.splice(start..end, number.bytes());
            }
        }
        7 if len >= 8 => {
            let at = rng.below(len - 7) & !3;
            let word = EDGE_WORDS[rng.below(EDGE_WORDS.len())];
            let bytes = if rng.below(2) == 0 {
                word.to_le_bytes().to_vec()
            } else {
                (word as u32).to_le_bytes().to_vec()
            };
            let end = (at + bytes.len()).min(len);
            data[at..end].copy_from_slice(&bytes[..end - at]);
        }
        _ if !other.is_empty() => {
            // The head of this input, the tail of another.
            let cut = rng.below(len + 1);
            let from = rng.below(other.len());
            data.truncate(cut);
            data.extend_from_slice(&other[from..]);
        }
        _ => {}
    }
}

/// How a format is read: a value or an error.
type Reader = Box<dyn Fn(&Path) -> anyhow::Result<()>>;

/// A file the kiosk or its tools read, and how they read it.
struct Format {
    name: &'static str,
    /// The name the file has when it is read (some readers look beside it).
    file_name: &'static str,
    read: Reader,
    /// The largest single allocation an input of a length justifies.
    allowance: fn(usize) -> usize,
    /// Puts the format's checksums right after a mutation (done for half the inputs), so that
    /// mutations reach what the checksums guard.
    fix_checksums: Option<fn(&mut [u8])>,
}

/// A table's header checksum (bytes 0..92 at 92) and data checksum (from the records to the
/// end at 88; an i8 table of version 3 stops before its rows, so its data checksum stays wrong).
fn fix_table_checksums(data: &mut [u8]) {
    if data.len() < 128 {
        return;
    }
    let records = u64::from_le_bytes(data[56..64].try_into().unwrap());
    if let Some(body) = usize::try_from(records).ok().and_then(|r| data.get(r..)) {
        let crc = crc32fast::hash(body);
        data[88..92].copy_from_slice(&crc.to_le_bytes());
    }
    let crc = crc32fast::hash(&data[..92]);
    data[92..96].copy_from_slice(&crc.to_le_bytes());
}

/// Each PNG chunk's CRC over its type and data, as far as the chunk lengths hold.
fn fix_png_checksums(data: &mut [u8]) {
    let mut at = 8;
    while at + 12 <= data.len() {
        let len = u32::from_be_bytes(data[at..at + 4].try_into().unwrap()) as usize;
        let Some(end) = (at + 8).checked_add(len).filter(|&e| e + 4 <= data.len()) else {
            return;
        };
        let crc = crc32fast::hash(&data[at + 4..end]);
        data[end..end + 4].copy_from_slice(&crc.to_be_bytes());
        at = end + 4;
    }
}

fn corpus_dir(format: &str) -> PathBuf {
    common::repo("tests/hostile/corpus").join(format)
}

fn seeds(format: &str) -> Vec<Vec<u8>> {
    let dir = corpus_dir(format);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (write_corpus makes it)", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// The table the stock, trends and labels readers check ids against.
fn fixed_table(dir: &Path) -> Table {
    let path = dir.join("fixed.fkt");
    seed_table(4, Element::F32)
        .write(&path, Element::F32)
        .unwrap();
    Table::load(&path).unwrap()
}

fn seed_table(items: usize, element: Element) -> TableBuilder {
    let columns = vec!["gender".to_string(), "articleType".to_string()];
    let mut builder = match element {
        Element::I8 => TableBuilder::new_i8(Fingerprint([7; 32]), 8, columns),
        _ => TableBuilder::new(Fingerprint([7; 32]), 8, columns),
    };
    for i in 0..items {
        let vector: Vec<f32> = (0..8).map(|d| ((i * 8 + d) as f32 * 0.7).sin()).collect();
        let item = Item {
            id: format!("{}", 1000 + i),
            source: format!("{}.jpg", 1000 + i),
            digest: format!("{:064x}", i),
            metadata: vec!["Women".into(), format!("Tops {i}")],
        };
        builder.push(item, &vector).unwrap();
    }
    builder
}

fn formats(work: &Path) -> Vec<Format> {
    let table = std::sync::Arc::new(fixed_table(work));
    let (stock_table, trends_table) = (table.clone(), table.clone());
    vec![
        Format {
            name: "table",
            file_name: "catalogue.fkt",
            read: Box::new(|path| Table::load(path).map(drop)),
            fix_checksums: Some(fix_table_checksums),
            allowance,
        },
        Format {
            name: "part",
            file_name: "part-0001-of-0004.parquet",
            read: Box::new(|path| Part::read(path).map(drop)),
            fix_checksums: None,
            allowance,
        },
        Format {
            name: "config",
            file_name: "kiosk.toml",
            read: Box::new(|path| {
                let text = std::fs::read_to_string(path)?;
                Config::parse(&text)?.validate()
            }),
            fix_checksums: None,
            allowance,
        },
        Format {
            name: "model-manifest",
            file_name: "model.manifest.json",
            read: Box::new(|path| Manifest::load(path).map(drop)),
            fix_checksums: None,
            allowance,
        },
        Format {
            name: "parser-manifest",
            file_name: "parser.manifest.json",
            read: Box::new(|path| ParserManifest::load(path).map(drop)),
            fix_checksums: None,
            allowance,
        },
        Format {
            name: "labels",
            file_name: "labels.csv",
            read: Box::new(|path| Labels::load(path).map(drop)),
            fix_checksums: None,
            allowance,
        },
        Format {
            name: "stock",
            file_name: "stock.csv",
            read: Box::new(move |path| Stock::load(path, &stock_table).map(drop)),
            fix_checksums: None,
            allowance,
        },
        Format {
            name: "trends",
            file_name: "trends.json",
            read: Box::new(move |path| Trends::load(path, &trends_table).map(drop)),
            fix_checksums: None,
            allowance,
        },
        Format {
            name: "scan-log",
            file_name: "scans.jsonl",
            read: Box::new(|path| {
                trends::read_log(path)?;
                Outbox::new(path, 0).read(None, 1000)?;
                // The kiosk's own repair on open (it appends nothing here).
                kiosk_service::scanlog::ScanLog::open(path, 1 << 20, 0).map(drop)
            }),
            fix_checksums: None,
            allowance,
        },
        Format {
            name: "checkpoint",
            file_name: "checkpoint.json",
            read: Box::new(|path| {
                let checkpoint = Checkpoint::load(path)?;
                let log = path.with_file_name("scans.jsonl");
                std::fs::write(&log, b"{\"scan\":1}\n{\"scan\":2}\n")?;
                Outbox::new(&log, 1).read(checkpoint.position, 10).map(drop)
            }),
            fix_checksums: None,
            allowance,
        },
        Format {
            name: "calibration-record",
            file_name: "empty-scene.toml",
            read: Box::new(|path| {
                let reference = path.with_extension("png");
                std::fs::write(&reference, &seeds("calibration-picture")[0])?;
                Calibration::load(&reference).map(drop)
            }),
            fix_checksums: None,
            allowance: picture_allowance,
        },
        Format {
            name: "calibration-picture",
            file_name: "empty-scene.png",
            read: Box::new(|path| Calibration::load(path).map(drop)),
            fix_checksums: Some(fix_png_checksums),
            allowance: picture_allowance,
        },
    ]
}

/// Reads one input: whether it was refused with an error, or what went wrong.
fn run_one(format: &Format, path: &Path, input: &[u8]) -> Result<bool, String> {
    std::fs::write(path, input).unwrap();
    LARGEST.with(|l| l.set(0));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (format.read)(path)));
    let largest = LARGEST.with(|l| l.get());
    let Ok(result) = outcome else {
        return Err("panicked".into());
    };
    if largest > (format.allowance)(input.len()) {
        return Err(format!(
            "allocated {largest} bytes at once for a {}-byte file",
            input.len()
        ));
    }
    Ok(result.is_err())
}

#[test]
fn hostile_files_give_a_value_or_an_error_never_a_panic_or_a_huge_allocation() {
    let execs: usize = std::env::var("FASHION_KIOSK_FUZZ_EXECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let first_seed: u64 = std::env::var("FASHION_KIOSK_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    // The readers' own error paths log; a panic here is reported below, not on stderr.
    std::panic::set_hook(Box::new(|_| {}));
    let out = common::repo("target/hostile");
    let work = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for format in formats(work.path()) {
        let corpus = seeds(format.name);
        let dir = out.join(format.name);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format.file_name);
        // Every seed reads as it is.
        for (n, seed) in corpus.iter().enumerate() {
            match run_one(&format, &path, seed) {
                Ok(false) => {}
                Ok(true) => failures.push(format!("{} seed {n} is refused", format.name)),
                Err(problem) => failures.push(format!("{} seed {n}: {problem}", format.name)),
            }
        }
        let mut rng = Rng(first_seed ^ (format.name.len() as u64) << 32);
        let mut errors = 0usize;
        for _ in 0..execs {
            let mut input = corpus[rng.below(corpus.len())].clone();
            let other = &corpus[rng.below(corpus.len())];
            for _ in 0..1 + rng.below(4) {
                mutate(&mut input, other, &mut rng);
            }
            if let Some(fix) = format.fix_checksums.filter(|_| rng.below(2) == 0) {
                fix(&mut input);
            }
            match run_one(&format, &path, &input) {
                Ok(refused) => errors += usize::from(refused),
                Err(problem) => {
                    let kept = out.join(format!("{}-failed.bin", format.name));
                    std::fs::write(&kept, &input).unwrap();
                    failures.push(format!(
                        "{}: {problem} (input kept in {})",
                        format.name,
                        kept.display()
                    ));
                    break;
                }
            }
        }
        println!(
            "{:>20}: {execs} inputs from {} seeds, {errors} refused with an error, the rest read",
            format.name,
            corpus.len()
        );
    }
    let _ = std::panic::take_hook();
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Writes the seed corpus (run once; the files are committed).
#[test]
#[ignore]
fn write_corpus() {
    let put = |format: &str, name: &str, bytes: &[u8]| {
        let dir = corpus_dir(format);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    let work = tempfile::tempdir().unwrap();
    for (element, items) in [(Element::F32, 3), (Element::F16, 5), (Element::I8, 4)] {
        let path = work.path().join("t.fkt");
        seed_table(items, element).write(&path, element).unwrap();
        put(
            "table",
            &format!("{}-{items}.fkt", element.name()),
            &std::fs::read(&path).unwrap(),
        );
    }
    for (items, dim) in [(3usize, 4usize), (6, 2)] {
        let part = Part {
            fingerprint: Fingerprint([9; 32]),
            dim,
            shard: Shard::new(2, 4).unwrap(),
            columns: vec!["gender".into()],
            items: (0..items)
                .map(|i| Item {
                    id: format!("{i}"),
                    source: format!("{i}.jpg"),
                    digest: format!("{i:064x}"),
                    metadata: vec!["Men".into()],
                })
                .collect(),
            vectors: (0..items * dim).map(|v| v as f32 / 7.0).collect(),
            skipped: vec![Skipped {
                file: "bad.jpg".into(),
                reason: "truncated JPEG".into(),
            }],
        };
        let path = work.path().join("p.parquet");
        part.write(&path).unwrap();
        put(
            "part",
            &format!("{items}x{dim}.parquet"),
            &std::fs::read(&path).unwrap(),
        );
    }
    for (name, path) in [
        ("packaged.toml", "systemd/kiosk.toml"),
        ("demo.toml", "demo/kiosk.toml"),
    ] {
        put("config", name, &std::fs::read(common::repo(path)).unwrap());
    }
    for name in ["fashion-resnet50-int8", "fashion-resnet50-fp32"] {
        let file = format!("models/{name}.manifest.json");
        put(
            "model-manifest",
            &format!("{name}.json"),
            &std::fs::read(common::repo(&file)).unwrap(),
        );
    }
    put(
        "parser-manifest",
        "garment-parser.json",
        &std::fs::read(common::repo("models/garment-parser.manifest.json")).unwrap(),
    );
    let labels = std::fs::read_to_string(common::repo("demo/labels.csv")).unwrap();
    let head: String = labels.lines().take(6).map(|l| format!("{l}\n")).collect();
    put("labels", "demo-head.csv", head.as_bytes());
    put(
        "stock",
        "in-stock.csv",
        b"id,in_stock\n1000,yes\n1001,no\nzz,1\n",
    );
    put(
        "stock",
        "quantity.csv",
        b"quantity,id\n0,1002\n3,1000\n0,1000\n",
    );
    let table = fixed_table(work.path());
    let day = 86_400;
    let scan = |secs: u64, id: &str| trends::Scan {
        time: std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000 + secs),
        id: id.into(),
        outfit: None,
    };
    let history = vec![
        scan(0, "1000"),
        scan(30, "1001"),
        scan(day, "1000"),
        scan(day + 9, "1002"),
    ];
    let sidecar = work.path().join("trends.json");
    let options = Options {
        session_gap_secs: 600.0,
        half_life_days: 30.0,
        similarity: Similarity::Jaccard,
        neighbours: 5,
    };
    trends::build(&[history], &table, options, &sidecar).unwrap();
    put("trends", "jaccard.json", &std::fs::read(&sidecar).unwrap());
    put("scan-log", "scans.jsonl", SCAN_LOG.as_bytes());
    let checkpoint = r#"{"position":{"inode":7,"first_line_crc":1234,"offset":11,"line":{"len":11,"crc":99}},"last_key":"k/b/1"}"#;
    put("checkpoint", "checkpoint.json", checkpoint.as_bytes());
    let frame =
        image::RgbImage::from_fn(32, 24, |x, y| image::Rgb([x as u8 * 8, y as u8 * 10, 128]));
    let calibration =
        Calibration::from_frames(&[frame], None, &ColourSettings::default(), Vec::new()).unwrap();
    let reference = work.path().join("empty-scene.png");
    calibration.save(&reference).unwrap();
    put(
        "calibration-picture",
        "empty-scene.png",
        &std::fs::read(&reference).unwrap(),
    );
    put(
        "calibration-record",
        "empty-scene.toml",
        &std::fs::read(reference.with_extension("toml")).unwrap(),
    );
}

/// Scan log lines as the kiosk writes them: an item, nothing, an error, an outfit.
const SCAN_LOG: &str = r#"{"time":"2026-12-01T10:00:00.123Z","boot":"b1","scan":1,"outcome":"ok","region":"foreground","results":[{"id":"1000","score":0.81},{"id":"1001","score":0.62}],"coalesced":0,"latency_ms":{"capture":12.0,"embed":180.5,"search":3.1,"total":201.0}}
{"time":"2026-12-01T10:00:09.000Z","boot":"b1","scan":2,"outcome":"nothing","region":"none","results":[],"coalesced":1,"latency_ms":{"total":20.0}}
{"time":"2026-12-01T10:01:00.000Z","boot":"b1","scan":3,"outcome":"error","error":"camera /dev/video0: timed out","region":"none","results":[],"coalesced":0,"latency_ms":{"total":1000.0}}
{"time":"2026-12-01T10:02:00.000Z","boot":"b1","scan":4,"outcome":"ok","region":"outfit","results":[{"id":"1002","score":0.7}],"garments":[{"class":"upper","bbox":[10,20,100,120],"share":0.2,"colour":"Blue","results":[{"id":"1002","score":0.7}]}],"coalesced":0,"latency_ms":{"total":900.0}}
"#;
