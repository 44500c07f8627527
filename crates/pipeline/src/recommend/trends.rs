//! Scan history as the collaborative half: `fashion-kiosk trends` reads the scan logs of one or
//! many kiosks, splits each kiosk's scans into sessions (scans less than `session_gap` apart),
//! and scores item pairs scanned in one session (SAR-style: co-occurrence weighted by a time
//! decay with a half-life, then Jaccard, lift or plain counts) and each item's popularity. It
//! writes a sidecar of each item's top neighbours, tied to the table's content id; the kiosk
//! loads it beside the table and blends it into the ranking.
//!
//! The sidecar is JSON (`"format":"fashion-kiosk trends","version":1`), written atomically.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::record::{Outcome, ScanRecord};
use kiosk_table::catalogue::Table;
use kiosk_util::files::write_atomically;

const FORMAT: &str = "fashion-kiosk trends";
const VERSION: u32 = 1;

/// How a pair's co-occurrence becomes its score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Similarity {
    /// Co-occurrence ÷ (occurrences of either): SAR's default.
    Jaccard,
    /// Co-occurrence ÷ (occurrence × occurrence): favours rarer pairs.
    Lift,
    /// The decayed co-occurrence itself.
    Count,
}

/// How the history is read.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Options {
    /// Scans further apart than this start a new session, seconds.
    pub session_gap_secs: f64,
    /// A session this many days older than the newest scan counts half, days.
    pub half_life_days: f64,
    pub similarity: Similarity,
    /// Neighbours kept per item.
    pub neighbours: usize,
}

impl Options {
    /// Checks the values; the error names the option.
    pub fn validate(&self) -> Result<()> {
        let gap_ok = self.session_gap_secs > 0.0
            && Duration::try_from_secs_f64(self.session_gap_secs).is_ok_and(|d| d < MAX_GAP);
        if !gap_ok {
            bail!(
                "session gap {} s: must be above 0 and under a year",
                self.session_gap_secs
            );
        }
        if !(self.half_life_days > 0.0 && self.half_life_days.is_finite()) {
            bail!(
                "half-life {} days: must be a number above 0",
                self.half_life_days
            );
        }
        Ok(())
    }
}

/// The longest session gap taken.
const MAX_GAP: Duration = Duration::from_secs(366 * 86_400);

/// Sessions more than this many half-lives older than the newest scan weigh under 2⁻⁶⁰ and are
/// left out: their weights would otherwise underflow to 0 and leave pairs scored 0 ÷ 0.
const MAX_HALF_LIVES: f64 = 60.0;

/// One scan of the history: when, and the item it found first (for an outfit, one garment's).
#[derive(Debug, Clone, PartialEq)]
pub struct Scan {
    pub time: SystemTime,
    pub id: String,
    /// The outfit this garment was worn in (its scan's place in the history): an outfit is a
    /// session of its own.
    pub outfit: Option<u64>,
}

/// The sidecar as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Sidecar {
    format: String,
    version: u32,
    /// The table's content id ([`Table::content_id`]).
    table: String,
    built: String,
    options: Options,
    sessions: usize,
    scans: usize,
    /// id → its popularity (0–1) and best neighbours (id, score), best first.
    items: BTreeMap<String, ItemTrends>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ItemTrends {
    popularity: f32,
    neighbours: Vec<(String, f32)>,
}

/// A loaded sidecar, by table index.
#[derive(Debug, Clone, Default)]
pub struct Trends {
    neighbours: HashMap<usize, Vec<(usize, f32)>>,
    popularity: HashMap<usize, f32>,
    /// Items by popularity, most popular first.
    popular: Vec<usize>,
    /// Ids in the sidecar the table does not hold.
    pub unknown_ids: usize,
    pub sessions: usize,
    pub scans: usize,
}

impl Trends {
    /// Item `index`'s co-scan neighbours (index, score), best first.
    pub fn neighbours(&self, index: usize) -> &[(usize, f32)] {
        self.neighbours.get(&index).map_or(&[], Vec::as_slice)
    }

    /// Item `index`'s co-scan neighbours with their scores scaled to its best (0–1), best first.
    pub fn co_scans(&self, index: usize) -> impl Iterator<Item = (usize, f32)> + '_ {
        let neighbours = self.neighbours(index);
        let best = neighbours.iter().map(|n| n.1).fold(0.0f32, f32::max);
        neighbours
            .iter()
            .map(move |&(i, s)| (i, if best > 0.0 { s / best } else { 0.0 }))
    }

    /// Item `index`'s popularity, 0–1.
    pub fn popularity(&self, index: usize) -> f32 {
        self.popularity.get(&index).copied().unwrap_or(0.0)
    }

    /// Items seen, most popular first.
    pub fn popular(&self) -> &[usize] {
        &self.popular
    }

    /// Trends from (item, neighbours) lists and items by popularity (for tests of the rules).
    #[cfg(test)]
    pub fn from_parts(neighbours: &[(usize, &[(usize, f32)])], popular: &[usize]) -> Self {
        let count = popular.len() as f32;
        Trends {
            neighbours: neighbours.iter().map(|(i, n)| (*i, n.to_vec())).collect(),
            popularity: popular
                .iter()
                .enumerate()
                .map(|(rank, &i)| (i, 1.0 - rank as f32 / count))
                .collect(),
            popular: popular.to_vec(),
            ..Trends::default()
        }
    }

    /// Reads a sidecar for `table`: refused when made for another table.
    pub fn load(path: &Path, table: &Table) -> Result<Self> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read trends {}", path.display()))?;
        let sidecar: Sidecar = serde_json::from_slice(&bytes)
            .with_context(|| format!("trends {} is not valid (truncated?)", path.display()))?;
        if sidecar.format != FORMAT || sidecar.version != VERSION {
            bail!(
                "trends {}: format {:?} version {}, this build reads {FORMAT:?} version {VERSION}",
                path.display(),
                sidecar.format,
                sidecar.version
            );
        }
        if sidecar.table != table.content_id() {
            bail!(
                "trends {} was made for table {}, not {} ({}): run `fashion-kiosk trends` again",
                path.display(),
                sidecar.table,
                table.content_id(),
                table.path().display()
            );
        }
        let index = table.positions();
        let mut trends = Trends {
            sessions: sidecar.sessions,
            scans: sidecar.scans,
            ..Trends::default()
        };
        let mut unknown = HashSet::new();
        for (id, item) in &sidecar.items {
            let Some(&i) = index.get(id.as_str()) else {
                unknown.insert(id.clone());
                continue;
            };
            trends.popularity.insert(i, item.popularity);
            let neighbours: Vec<(usize, f32)> = item
                .neighbours
                .iter()
                .filter_map(|(n, score)| match index.get(n.as_str()) {
                    Some(&j) => Some((j, *score)),
                    None => {
                        unknown.insert(n.clone());
                        None
                    }
                })
                .collect();
            if !neighbours.is_empty() {
                trends.neighbours.insert(i, neighbours);
            }
        }
        trends.unknown_ids = unknown.len();
        let mut popular: Vec<usize> = trends.popularity.keys().copied().collect();
        popular.sort_by(|a, b| {
            trends.popularity[b]
                .total_cmp(&trends.popularity[a])
                .then(a.cmp(b))
        });
        trends.popular = popular;
        if trends.unknown_ids > 0 {
            tracing::warn!(
                "trends {}: {} ids are not in the table {}; they are left out",
                path.display(),
                trends.unknown_ids,
                table.path().display()
            );
        }
        Ok(trends)
    }
}

/// A scan log and its rotated files (`LOG.N` … `LOG.1`, `LOG`), oldest first, as one kiosk's
/// history in time order: each scan that found an item (its first result), and each garment of an
/// outfit scan (its first result, the outfit's garments together). Lines that are not scan
/// records are counted, not fatal.
pub fn read_log(path: &Path) -> Result<(Vec<Scan>, usize)> {
    let mut files: Vec<PathBuf> = (1..)
        .map(|n| {
            let mut name = path.as_os_str().to_owned();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        })
        .take_while(|p| p.exists())
        .collect();
    files.reverse();
    files.push(path.to_path_buf());
    let mut scans = Vec::new();
    let mut bad = 0;
    let mut line_number = 0u64;
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read scan log {}", file.display()))?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            line_number += 1;
            let Ok(record) = ScanRecord::parse(line) else {
                bad += 1;
                continue;
            };
            if record.outcome != Outcome::Ok {
                continue;
            }
            let Ok(time) = humantime::parse_rfc3339_weak(&record.time) else {
                bad += 1;
                continue;
            };
            let outfit = (!record.garments.is_empty()).then_some(line_number);
            let found = record
                .results
                .first()
                .into_iter()
                .chain(record.garments.iter().filter_map(|g| g.results.first()));
            let before = scans.len();
            scans.extend(found.map(|item| Scan {
                time,
                id: item.id.clone(),
                outfit,
            }));
            bad += usize::from(scans.len() == before);
        }
    }
    // Stable: an outfit's garments stay together.
    scans.sort_by_key(|s| s.time);
    Ok((scans, bad))
}

/// Splits one kiosk's scans (in time order) into sessions: at a gap longer than `gap`, and
/// around each outfit.
pub fn sessions(scans: &[Scan], gap: Duration) -> Vec<&[Scan]> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=scans.len() {
        let split = i == scans.len()
            || scans[i].outfit != scans[i - 1].outfit
            || scans[i]
                .time
                .duration_since(scans[i - 1].time)
                .unwrap_or_default()
                > gap;
        if split {
            if i > start {
                out.push(&scans[start..i]);
            }
            start = i;
        }
    }
    out
}

/// What `trends` built.
pub struct Built {
    pub sessions: usize,
    pub scans: usize,
    pub items: usize,
    pub pairs: usize,
}

/// Builds the sidecar for `table` from the kiosks' histories and writes it to `out`.
pub fn build(
    histories: &[Vec<Scan>],
    table: &Table,
    options: Options,
    out: &Path,
) -> Result<Built> {
    options.validate()?;
    let known: HashSet<&str> = table.items().iter().map(|i| i.id).collect();
    let gap = Duration::from_secs_f64(options.session_gap_secs);
    let newest = histories
        .iter()
        .filter_map(|h| h.last().map(|s| s.time))
        .max()
        .unwrap_or(SystemTime::UNIX_EPOCH);
    // A session's weight, or `None` when it is too old to count.
    let decay = |time: SystemTime| -> Option<f64> {
        let age_days = newest
            .duration_since(time)
            .unwrap_or_default()
            .as_secs_f64()
            / 86_400.0;
        let half_lives = age_days / options.half_life_days;
        (half_lives <= MAX_HALF_LIVES).then(|| 0.5f64.powf(half_lives))
    };
    let mut occurrence: HashMap<&str, f64> = HashMap::new();
    let mut scanned: HashMap<&str, f64> = HashMap::new();
    let mut pairs: HashMap<(&str, &str), f64> = HashMap::new();
    let (mut session_count, mut scan_count) = (0, 0);
    for history in histories {
        for session in sessions(history, gap) {
            let Some(weight) = decay(session.last().expect("sessions are not empty").time) else {
                continue;
            };
            session_count += 1;
            let mut items: Vec<&str> = session
                .iter()
                .map(|s| s.id.as_str())
                .filter(|id| known.contains(id))
                .collect();
            scan_count += items.len();
            for id in &items {
                *scanned.entry(id).or_default() += weight;
            }
            items.sort_unstable();
            items.dedup();
            for (n, a) in items.iter().enumerate() {
                *occurrence.entry(a).or_default() += weight;
                for b in &items[n + 1..] {
                    *pairs.entry((a, b)).or_default() += weight;
                }
            }
        }
    }
    let mut neighbours: HashMap<&str, Vec<(&str, f64)>> = HashMap::new();
    for (&(a, b), &together) in &pairs {
        let (ca, cb) = (occurrence[a], occurrence[b]);
        let score = match options.similarity {
            Similarity::Jaccard => together / (ca + cb - together),
            Similarity::Lift => together / (ca * cb),
            Similarity::Count => together,
        };
        neighbours.entry(a).or_default().push((b, score));
        neighbours.entry(b).or_default().push((a, score));
    }
    let most = scanned.values().copied().fold(0.0, f64::max);
    let mut items = BTreeMap::new();
    for (&id, &count) in &scanned {
        let mut list = neighbours.remove(id).unwrap_or_default();
        list.sort_by(|x, y| y.1.total_cmp(&x.1).then(x.0.cmp(y.0)));
        list.truncate(options.neighbours);
        items.insert(
            id.to_string(),
            ItemTrends {
                popularity: (count / most) as f32,
                neighbours: list
                    .into_iter()
                    .map(|(n, s)| (n.to_string(), s as f32))
                    .collect(),
            },
        );
    }
    let built = Built {
        sessions: session_count,
        scans: scan_count,
        items: items.len(),
        pairs: pairs.len(),
    };
    let sidecar = Sidecar {
        format: FORMAT.into(),
        version: VERSION,
        table: table.content_id(),
        built: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        options,
        sessions: session_count,
        scans: scan_count,
        items,
    };
    let bytes = serde_json::to_vec(&sidecar).context("cannot encode the trends")?;
    write_atomically(out, &bytes)?;
    Ok(built)
}

/// Recall@k of the next scan of held-out sessions, for each way of recommending.
#[derive(Debug, Clone, Serialize)]
pub struct NextScan {
    /// Consecutive pairs (an item, then another) scored.
    pub pairs: usize,
    pub k: usize,
    /// The k nearest by picture.
    pub visual: f64,
    /// The k best co-scan neighbours.
    pub co_scan: f64,
    /// The k most popular items.
    pub popular: f64,
    /// The re-ranking blend (visual candidates + co-scans + popularity, no filters).
    pub blend: f64,
}

/// For each consecutive pair (a, b) of the held-out sessions (b ≠ a, both in the table): is b
/// among the k items recommended after a scan of a?
pub fn next_scan_recall(
    table: &Table,
    trends: &std::sync::Arc<Trends>,
    held_out: &[Vec<Scan>],
    session_gap: Duration,
    k: usize,
    co_scan_weight: f32,
) -> Result<NextScan> {
    use super::Recommender;
    use crate::config::RecommendConfig;
    let index = table.positions();
    let blend = Recommender::new(
        RecommendConfig {
            co_scan_weight,
            ..RecommendConfig::off()
        },
        table,
        None,
        Some(trends.clone()),
    );
    let popular: Vec<usize> = trends.popular().to_vec();
    let mut pairs = 0usize;
    let mut hits = [0usize; 4];
    for history in held_out {
        for session in sessions(history, session_gap) {
            for pair in session.windows(2) {
                let (Some(&a), Some(&b)) = (
                    index.get(pair[0].id.as_str()),
                    index.get(pair[1].id.as_str()),
                ) else {
                    continue;
                };
                if a == b {
                    continue;
                }
                pairs += 1;
                let query = table.vector(a)?;
                let visual_hits = table.nearest(&query, blend.candidates().max(k + 1), None)?;
                let without_a = |list: Vec<usize>| -> Vec<usize> {
                    list.into_iter().filter(|&i| i != a).take(k).collect()
                };
                let lists = [
                    without_a(visual_hits.iter().map(|h| h.index).collect()),
                    without_a(trends.neighbours(a).iter().map(|n| n.0).collect()),
                    without_a(popular.clone()),
                    without_a(
                        blend
                            .rank(table, &query, &visual_hits, k + 1)
                            .iter()
                            .map(|r| r.index)
                            .collect(),
                    ),
                ];
                for (n, list) in lists.iter().enumerate() {
                    hits[n] += usize::from(list.contains(&b));
                }
            }
        }
    }
    let share = |n: usize| hits[n] as f64 / pairs.max(1) as f64;
    Ok(NextScan {
        pairs,
        k,
        visual: share(0),
        co_scan: share(1),
        popular: share(2),
        blend: share(3),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiosk_table::catalogue::{Element, Item, TableBuilder};
    use kiosk_util::digest::Fingerprint;

    fn table(n: usize) -> (tempfile::TempDir, Table) {
        let mut builder = TableBuilder::new(Fingerprint([3; 32]), 2, vec![]);
        for i in 0..n {
            let item = Item {
                id: format!("i{i}"),
                source: format!("i{i}.jpg"),
                digest: String::new(),
                metadata: vec![],
            };
            let angle = i as f32;
            builder.push(item, &[angle.cos(), angle.sin()]).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.fkt");
        builder.write(&path, Element::F32).unwrap();
        let table = Table::load(&path).unwrap();
        (dir, table)
    }

    fn scan(secs: u64, id: &str) -> Scan {
        Scan {
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs),
            id: id.into(),
            outfit: None,
        }
    }

    #[test]
    fn an_outfits_garments_are_a_session_of_their_own_and_other_lines_count_as_bad() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("scans.jsonl");
        let item = |second: u32, id: &str| {
            format!(
                r#"{{"time":"2026-12-01T10:00:{second:02}.000Z","boot":"b","scan":1,"outcome":"ok","region":"reference","results":[{{"id":"{id}","score":0.9}},{{"id":"zz","score":0.5}}]}}"#
            )
        };
        let garment = |class: &str, id: &str| {
            format!(
                r#"{{"class":"{class}","bbox":[0,0,9,9],"share":0.2,"colour":"Blue","rgb":[0,0,200],"results":[{{"id":"{id}","score":0.8}},{{"id":"zz","score":0.4}}]}}"#
            )
        };
        let outfit = format!(
            r#"{{"version":2,"time":"2026-12-01T10:00:20.000Z","boot":"b","scan":3,"outcome":"ok","region":"outfit","results":[],"garments":[{},{}]}}"#,
            garment("upper", "i2"),
            garment("lower", "i3")
        );
        let failed = r#"{"version":2,"time":"2026-12-01T10:00:30.000Z","boot":"b","scan":4,"outcome":"error","error":{"kind":"camera_lost","message":"gone"},"region":"none","results":[]}"#;
        let lines = [
            item(0, "i0"),
            item(10, "i1"),
            outfit,
            failed.to_string(),
            "not a record".to_string(),
            item(40, "i4"),
        ];
        std::fs::write(&log, lines.join("\n") + "\n").unwrap();
        let (scans, bad) = read_log(&log).unwrap();
        let ids: Vec<&str> = scans.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["i0", "i1", "i2", "i3", "i4"]);
        assert_eq!(bad, 1);
        // All within the gap, but the outfit stands alone.
        let sessions: Vec<Vec<&str>> = sessions(&scans, Duration::from_secs(600))
            .iter()
            .map(|s| s.iter().map(|scan| scan.id.as_str()).collect())
            .collect();
        assert_eq!(sessions, [vec!["i0", "i1"], vec!["i2", "i3"], vec!["i4"]]);
    }

    fn options() -> Options {
        Options {
            session_gap_secs: 600.0,
            half_life_days: 30.0,
            similarity: Similarity::Jaccard,
            neighbours: 10,
        }
    }

    #[test]
    fn sessions_split_at_the_gap_and_pairs_score_by_jaccard() {
        let (dir, t) = table(5);
        // Two sessions with i0 and i1 together, one with i0 and i2; an unknown id is ignored.
        let history = vec![
            scan(0, "i0"),
            scan(60, "i1"),
            scan(5000, "i0"),
            scan(5030, "i1"),
            scan(5040, "zz"),
            scan(20000, "i0"),
            scan(20100, "i2"),
        ];
        assert_eq!(sessions(&history, Duration::from_secs(600)).len(), 3);
        let out = dir.path().join("trends.json");
        let built = build(&[history], &t, options(), &out).unwrap();
        assert_eq!((built.sessions, built.scans), (3, 6));
        let trends = Trends::load(&out, &t).unwrap();
        let n = trends.neighbours(0);
        assert_eq!(n[0].0, 1);
        // i0 in 3 sessions, i1 in 2, together in 2 (a few hours of decay aside): 2/3.
        assert!((n[0].1 - 2.0 / 3.0).abs() < 0.01, "{n:?}");
        assert!((n[1].1 - 1.0 / 3.0).abs() < 0.01, "{n:?}");
        assert_eq!(trends.popular()[0], 0);
    }

    #[test]
    fn a_sidecar_for_another_table_or_truncated_is_refused_with_its_name() {
        let (dir, t) = table(5);
        let out = dir.path().join("trends.json");
        build(&[vec![scan(0, "i0"), scan(1, "i1")]], &t, options(), &out).unwrap();
        let (_other_dir, other) = table(6);
        let err = format!("{:#}", Trends::load(&out, &other).unwrap_err());
        assert!(
            err.contains("trends.json") && err.contains("made for table"),
            "{err}"
        );
        let bytes = std::fs::read(&out).unwrap();
        std::fs::write(&out, &bytes[..bytes.len() / 2]).unwrap();
        let err = format!("{:#}", Trends::load(&out, &t).unwrap_err());
        assert!(
            err.contains("trends.json") && err.contains("not valid"),
            "{err}"
        );
    }

    #[test]
    fn an_older_session_counts_less_by_the_half_life() {
        let (dir, t) = table(5);
        let day = 86_400;
        // i0+i1 together 60 days before the newest scan, i0+i2 today: i2 ranks first.
        let history = vec![
            scan(0, "i0"),
            scan(30, "i1"),
            scan(60 * day, "i0"),
            scan(60 * day + 30, "i2"),
        ];
        let out = dir.path().join("trends.json");
        let options = Options {
            similarity: Similarity::Count,
            ..options()
        };
        build(&[history], &t, options, &out).unwrap();
        let trends = Trends::load(&out, &t).unwrap();
        let n = trends.neighbours(0);
        assert_eq!(n[0].0, 2);
        assert!((n[1].1 / n[0].1 - 0.25).abs() < 1e-3, "{n:?}");
    }

    #[test]
    fn a_long_history_or_a_short_half_life_gives_finite_scores_the_kiosk_loads() {
        let (dir, t) = table(5);
        let day = 86_400;
        // i3 and i4 together once, 400 days ago; the same three items every day since. A
        // half-life of 0.01 days puts all but the last day's sessions beyond any f64 weight.
        let mut history = vec![scan(0, "i3"), scan(30, "i4")];
        history.extend((1..=400).flat_map(|d| {
            [
                scan(d * day, "i0"),
                scan(d * day + 30, "i1"),
                scan(d * day + 60, "i2"),
            ]
        }));
        for similarity in [Similarity::Jaccard, Similarity::Lift, Similarity::Count] {
            let out = dir.path().join("trends.json");
            let options = Options {
                half_life_days: 0.01,
                similarity,
                ..options()
            };
            let built = build(std::slice::from_ref(&history), &t, options, &out).unwrap();
            assert!(
                built.sessions >= 1 && built.sessions < 400,
                "{}",
                built.sessions
            );
            assert!(!std::fs::read_to_string(&out).unwrap().contains("null"));
            let trends = Trends::load(&out, &t).unwrap();
            assert!(trends.neighbours(3).is_empty(), "too old to count");
            let n = trends.neighbours(0);
            assert_eq!(n.len(), 2, "{similarity:?}");
            assert!(n.iter().all(|(_, s)| s.is_finite() && *s > 0.0), "{n:?}");
        }
    }

    #[test]
    fn options_out_of_range_are_refused_naming_them() {
        for (gap, half_life, named) in [
            (f64::INFINITY, 30.0, "session gap"),
            (f64::NAN, 30.0, "session gap"),
            (0.0, 30.0, "session gap"),
            (1e300, 30.0, "session gap"),
            (600.0, 0.0, "half-life"),
            (600.0, f64::INFINITY, "half-life"),
        ] {
            let options = Options {
                session_gap_secs: gap,
                half_life_days: half_life,
                ..options()
            };
            let err = options.validate().unwrap_err().to_string();
            assert!(err.contains(named), "{gap} {half_life}: {err}");
            let (dir, t) = table(2);
            assert!(build(&[], &t, options, &dir.path().join("t.json")).is_err());
        }
    }
}
