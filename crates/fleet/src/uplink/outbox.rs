//! The scan log read as an outbox: complete lines in order across rotation (`scans.jsonl.N` …
//! `.1`, then `scans.jsonl`), from a position that survives restarts, rotation and the files'
//! renames, and a checkpoint of what the broker has acknowledged, stored atomically.
//!
//! A position names a file by its inode and the checksum of its first line (an inode freed by a
//! dropped file may be reused by the next new log, whose first line differs), a byte offset in it
//! just after a complete line, and that line's length and checksum. When the file a position
//! names is gone (rotated past `keep` while the uplink was behind), reading starts at the oldest
//! file left, and the loss is logged. When the line before the offset is no longer there (the
//! kiosk cut back a line whose sync failed, and may have written another in its place), reading
//! resynchronises at the start of that line, a line boundary.

use std::fs::File;
use std::io::{BufRead, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use kiosk_util::files::write_atomically;

/// Where reading stands in the log: after the line that ends at `offset` of the file named by
/// `inode` and `first_line_crc`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub inode: u64,
    /// CRC-32 of the file's first line (with its newline); `None` before anything was read.
    pub first_line_crc: Option<u32>,
    pub offset: u64,
    /// The line that ends at `offset` (absent in checkpoints written before it was kept).
    #[serde(default)]
    pub line: Option<LineMark>,
}

/// A line's length and CRC-32, both with its newline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineMark {
    pub len: u64,
    pub crc: u32,
}

/// What the broker has acknowledged: the position after the last acknowledged line, and that
/// line's key (for the journal).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub position: Option<Position>,
    pub last_key: Option<String>,
}

impl Checkpoint {
    /// Reads the checkpoint; a missing file is the start of the log.
    pub fn load(path: &Path) -> Result<Self> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("checkpoint {} is not valid", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read checkpoint {}", path.display())),
        }
    }

    /// Stores it atomically (old or new, never a mix, across a power cut).
    pub fn save(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create checkpoint folder {}", dir.display()))?;
        }
        let bytes = serde_json::to_vec(self).context("cannot encode the checkpoint")?;
        write_atomically(path, &bytes)
    }
}

/// When the checkpoint is stored, as a function of a clock: at most every `every` while scans
/// are acknowledged, at once when none is in flight, and every `retry` while storing fails. A
/// failure is reported when it starts, then at most once per `report_every` with a count, and
/// its end is reported too.
#[derive(Debug)]
pub struct SaveSchedule {
    every: Duration,
    retry: Duration,
    report_every: Duration,
    tried_at: Instant,
    failing: Option<Failing>,
}

#[derive(Debug)]
struct Failing {
    reported_at: Instant,
    unreported: u64,
    total: u64,
}

/// What to say of a store attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum SaveReport {
    /// It failed, `times` times since the last report.
    Failing { error: String, times: u64 },
    /// It worked again after `failures` failures.
    Recovered { failures: u64 },
}

impl SaveSchedule {
    pub fn new(every: Duration, retry: Duration, report_every: Duration, now: Instant) -> Self {
        Self {
            every,
            retry,
            report_every,
            tried_at: now,
            failing: None,
        }
    }

    /// Whether a checkpoint that moved should be stored now.
    pub fn due(&self, now: Instant, in_flight: usize) -> bool {
        let wait = match (&self.failing, in_flight) {
            (Some(_), _) => self.retry,
            (None, 0) => Duration::ZERO,
            (None, _) => self.every,
        };
        now.saturating_duration_since(self.tried_at) >= wait
    }

    /// Notes an attempt's result; returns what to report, if anything.
    pub fn tried(&mut self, now: Instant, result: &Result<()>) -> Option<SaveReport> {
        self.tried_at = now;
        match (result, self.failing.as_mut()) {
            (Ok(()), None) => None,
            (Ok(()), Some(failing)) => {
                let failures = failing.total;
                self.failing = None;
                Some(SaveReport::Recovered { failures })
            }
            (Err(e), None) => {
                self.failing = Some(Failing {
                    reported_at: now,
                    unreported: 0,
                    total: 1,
                });
                Some(SaveReport::Failing {
                    error: format!("{e:#}"),
                    times: 1,
                })
            }
            (Err(e), Some(failing)) => {
                failing.total += 1;
                failing.unreported += 1;
                if now.saturating_duration_since(failing.reported_at) < self.report_every {
                    return None;
                }
                let times = failing.unreported;
                failing.reported_at = now;
                failing.unreported = 0;
                Some(SaveReport::Failing {
                    error: format!("{e:#}"),
                    times,
                })
            }
        }
    }
}

/// One complete line of the log and the position just after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub text: String,
    pub end: Position,
}

/// One file of the log as found on disk, held open (a rename does not move it under us).
struct LogFile {
    path: PathBuf,
    handle: File,
    inode: u64,
    size: u64,
    first_line_crc: Option<u32>,
}

/// The log's files, oldest first.
pub struct Outbox {
    path: PathBuf,
    keep: u32,
}

/// The longest line read; a longer one is skipped (the kiosk never writes one).
const MAX_LINE: usize = 1 << 20;

impl Outbox {
    /// The log at `path` with up to `keep` rotated files (the kiosk's `[scan_log]`).
    pub fn new(path: &Path, keep: u32) -> Self {
        Outbox {
            path: path.to_path_buf(),
            keep,
        }
    }

    /// The files, oldest first. They are opened newest first: a rotation while they are opened
    /// renames a file already opened to the next name (seen twice, kept once), and never one
    /// not yet opened past the names still to open, so none is missed.
    fn files(&self) -> Result<Vec<LogFile>> {
        let paths = std::iter::once(self.path.clone()).chain((1..=self.keep).map(|n| {
            let mut name = self.path.as_os_str().to_owned();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        }));
        let mut files: Vec<LogFile> = Vec::new();
        for path in paths {
            let mut file = match File::open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
            };
            let metadata = file
                .metadata()
                .with_context(|| format!("cannot read {}", path.display()))?;
            if files.iter().any(|f| f.inode == metadata.ino()) {
                continue;
            }
            let first_line_crc = first_line_crc(&mut file)
                .with_context(|| format!("cannot read {}", path.display()))?;
            files.push(LogFile {
                path,
                handle: file,
                inode: metadata.ino(),
                size: metadata.len(),
                first_line_crc,
            });
        }
        files.reverse();
        Ok(files)
    }

    /// Up to `max` complete lines after `from` (`None`: from the start of the oldest file), in
    /// order, each with the position after it. Lines that were lost (the file `from` names was
    /// dropped by rotation) are reported in the journal.
    pub fn read(&self, from: Option<Position>, max: usize) -> Result<Vec<Line>> {
        let files = self.files()?;
        let (mut index, mut offset) = match from {
            None => (0, 0),
            Some(position) => self.resume(&files, position)?,
        };
        let mut lines = Vec::new();
        while index < files.len() && lines.len() < max {
            let file = &files[index];
            read_lines(file, offset, max - lines.len(), &mut lines)
                .with_context(|| format!("cannot read {}", file.path.display()))?;
            if lines.len() < max {
                index += 1;
                offset = 0;
            }
        }
        Ok(lines)
    }

    /// Where reading goes on after `position`: the file it names and an offset at a line
    /// boundary in it.
    fn resume(&self, files: &[LogFile], position: Position) -> Result<(usize, u64)> {
        let same_file = |f: &LogFile| {
            f.inode == position.inode
                && (position.first_line_crc.is_none()
                    || f.first_line_crc == position.first_line_crc)
        };
        if let Some(index) = files.iter().position(same_file) {
            let file = &files[index];
            let offset = resynchronise(file, position)
                .with_context(|| format!("cannot read {}", file.path.display()))?;
            if offset != position.offset {
                tracing::warn!(
                    "scan log {}: the line before byte {} is no longer there (the kiosk cut \
                     back a write that failed); going on from the line at byte {offset}",
                    file.path.display(),
                    position.offset
                );
            }
            return Ok((index, offset));
        }
        if let Some(index) = files.iter().position(|f| f.inode == position.inode) {
            // The same file with another first line: rewritten from its start. When the only
            // line read was its first, that is the kiosk cutting back a failed write: no loss.
            let only_first_line = position.line.is_some_and(|l| l.len == position.offset);
            if !only_first_line {
                tracing::warn!(
                    "scan log {}: rewritten from its start since the uplink read it; scans in \
                     it after the last acknowledged one may be lost; going on from its start",
                    files[index].path.display()
                );
            }
            return Ok((index, 0));
        }
        tracing::warn!(
            "scan log {}: the file the uplink had reached is gone (rotated away while the broker \
             was unreachable, or replaced); scans in it after the last acknowledged one are \
             lost; going on from the oldest file left",
            self.path.display()
        );
        Ok((0, 0))
    }
}

/// `position.offset` when the line recorded before it is still there, else the start of that
/// line (the kiosk cut it back and may have written others from there), moved back to a line
/// boundary and to no further than the file's end.
fn resynchronise(file: &LogFile, position: Position) -> std::io::Result<u64> {
    let offset = position.offset;
    let start = match position.line {
        Some(line) if line.len <= offset => {
            if offset <= file.size {
                let mut bytes = vec![0; usize::try_from(line.len).unwrap_or(usize::MAX)];
                let mut handle = &file.handle;
                handle.seek(SeekFrom::Start(offset - line.len))?;
                handle.read_exact(&mut bytes)?;
                if crc32fast::hash(&bytes) == line.crc && bytes.ends_with(b"\n") {
                    return Ok(offset);
                }
            }
            offset - line.len
        }
        // A position from an older checkpoint: only the boundary itself can be checked.
        _ => offset,
    };
    line_boundary_at_or_before(file, start.min(file.size))
}

/// The largest offset ≤ `at` that starts a line (0, or just after a newline).
fn line_boundary_at_or_before(file: &LogFile, at: u64) -> std::io::Result<u64> {
    let mut end = at;
    let mut handle = &file.handle;
    let mut chunk = vec![0u8; 4096];
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let piece = &mut chunk[..(end - start) as usize];
        handle.seek(SeekFrom::Start(start))?;
        handle.read_exact(piece)?;
        // The byte just before `at` ends a line when it is a newline.
        if let Some(i) = piece.iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// The checksum of the file's first complete line, read in small steps (a line is ~500 bytes).
fn first_line_crc(file: &mut File) -> std::io::Result<Option<u32>> {
    let mut line = Vec::new();
    let found = std::io::BufReader::with_capacity(4096, file.by_ref())
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut line)?;
    file.seek(SeekFrom::Start(0))?;
    Ok((found > 0 && line.ends_with(b"\n")).then(|| crc32fast::hash(&line)))
}

/// Appends to `lines` up to `max` complete lines of `file` from `offset`.
fn read_lines(file: &LogFile, offset: u64, max: usize, lines: &mut Vec<Line>) -> Result<()> {
    let mut handle = &file.handle;
    handle.seek(SeekFrom::Start(offset))?;
    let mut bytes = Vec::new();
    handle.take(file.size - offset).read_to_end(&mut bytes)?;
    let mut start = 0;
    while lines.len() < max {
        let Some(length) = bytes[start..].iter().position(|&b| b == b'\n') else {
            break;
        };
        let end = start + length + 1;
        let position = Position {
            inode: file.inode,
            first_line_crc: file.first_line_crc,
            offset: offset + end as u64,
            line: Some(LineMark {
                len: (end - start) as u64,
                crc: crc32fast::hash(&bytes[start..end]),
            }),
        };
        let text = String::from_utf8_lossy(&bytes[start..end - 1]).into_owned();
        if text.len() > MAX_LINE {
            tracing::warn!(
                "{}: skipped a line of {} bytes at offset {}",
                file.path.display(),
                text.len(),
                offset + start as u64
            );
        } else if !text.trim().is_empty() {
            lines.push(Line {
                text,
                end: position,
            });
        }
        start = end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiosk_service::scanlog::ScanLog;

    #[derive(Serialize)]
    struct Record {
        scan: u64,
        pad: String,
    }

    fn scans(lines: &[Line]) -> Vec<u64> {
        lines
            .iter()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(&l.text).unwrap()["scan"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    }

    fn append(log: &mut ScanLog, range: std::ops::RangeInclusive<u64>) {
        for scan in range {
            log.append(&Record {
                scan,
                pad: "x".repeat(400),
            })
            .unwrap();
        }
    }

    #[test]
    fn reading_follows_the_log_through_rotation_from_where_it_stood() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scans.jsonl");
        // About 9 lines per file: 20 lines rotate twice.
        let mut log = ScanLog::open(&path, 4096, 3).unwrap();
        append(&mut log, 1..=5);
        let outbox = Outbox::new(&path, 3);
        let first = outbox.read(None, 3).unwrap();
        assert_eq!(scans(&first), [1, 2, 3]);
        let at = first.last().unwrap().end;
        append(&mut log, 6..=20);
        assert!(dir.path().join("scans.jsonl.2").exists());
        let rest = outbox.read(Some(at), 100).unwrap();
        assert_eq!(scans(&rest), (4..=20).collect::<Vec<_>>());
        // Nothing new: nothing read, from the last position.
        assert!(outbox
            .read(Some(rest.last().unwrap().end), 100)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_file_rotated_away_is_reported_and_reading_goes_on_from_the_oldest_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scans.jsonl");
        let mut log = ScanLog::open(&path, 4096, 1).unwrap();
        append(&mut log, 1..=2);
        let outbox = Outbox::new(&path, 1);
        let at = outbox.read(None, 1).unwrap()[0].end;
        // 30 more lines: the first file is dropped (keep = 1).
        append(&mut log, 3..=30);
        let rest = outbox.read(Some(at), 100).unwrap();
        let got = scans(&rest);
        assert!(got[0] > 2, "{got:?}");
        assert_eq!(*got.last().unwrap(), 30);
        assert!(got.windows(2).all(|w| w[1] == w[0] + 1), "{got:?}");
    }

    #[test]
    fn a_reused_inode_with_other_lines_is_not_taken_for_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scans.jsonl");
        std::fs::write(&path, "{\"scan\":1}\n{\"scan\":2}\n").unwrap();
        let outbox = Outbox::new(&path, 0);
        let at = outbox.read(None, 100).unwrap()[1].end;
        // Same file (same inode), rewritten with other lines, as keep = 0 rotation does.
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(0).unwrap();
        drop(file);
        std::fs::write(&path, "{\"scan\":7}\n{\"scan\":8}\n{\"scan\":9}\n").unwrap();
        let lines = outbox.read(Some(at), 100).unwrap();
        assert_eq!(scans(&lines), [7, 8, 9]);
    }

    #[test]
    fn a_torn_last_line_waits_until_it_is_complete() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scans.jsonl");
        std::fs::write(&path, "{\"scan\":1}\n{\"scan\":").unwrap();
        let outbox = Outbox::new(&path, 0);
        let lines = outbox.read(None, 100).unwrap();
        assert_eq!(scans(&lines), [1]);
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(b"2}\n").unwrap();
        assert_eq!(scans(&outbox.read(Some(lines[0].end), 100).unwrap()), [2]);
    }

    /// The kiosk cutting back its last line (a failed sync) and appending `then` in its place.
    fn cut_back_last_line_and_append(path: &Path, then: &[String]) {
        use std::io::Write;
        let text = std::fs::read(path).unwrap();
        let keep = text[..text.len() - 1]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        file.set_len(keep as u64).unwrap();
        for line in then {
            file.write_all(line.as_bytes()).unwrap();
        }
    }

    fn scan_line(scan: u64, pad: usize) -> String {
        format!("{{\"scan\":{scan},\"pad\":\"{}\"}}\n", "x".repeat(pad))
    }

    #[test]
    fn a_line_cut_back_after_it_was_read_resynchronises_at_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scans.jsonl");
        // Two rotated files behind the live one, which must never be read again.
        let mut log = ScanLog::open(&path, 4096, 2).unwrap();
        append(&mut log, 1..=20);
        drop(log);
        let outbox = Outbox::new(&path, 2);
        let all = outbox.read(None, 100).unwrap();
        assert_eq!(*scans(&all).last().unwrap(), 20);
        let at = all.last().unwrap().end;

        // Cut back and replaced by a longer line: the position falls inside it.
        cut_back_last_line_and_append(&path, &[scan_line(21, 600)]);
        let lines = outbox.read(Some(at), 100).unwrap();
        assert_eq!(scans(&lines), [21]);
        let at = lines[0].end;

        // By two shorter lines: the position falls inside the second.
        cut_back_last_line_and_append(&path, &[scan_line(22, 250), scan_line(23, 250)]);
        let lines = outbox.read(Some(at), 100).unwrap();
        assert_eq!(scans(&lines), [22, 23]);
        let at = lines[1].end;

        // By nothing yet: the position is past the end; nothing is replayed.
        cut_back_last_line_and_append(&path, &[]);
        assert!(outbox.read(Some(at), 100).unwrap().is_empty());
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(scan_line(24, 10).as_bytes()).unwrap();
        assert_eq!(scans(&outbox.read(Some(at), 100).unwrap()), [24]);
    }

    #[test]
    fn the_only_line_of_the_live_file_cut_back_is_not_a_lost_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scans.jsonl");
        std::fs::write(dir.path().join("scans.jsonl.1"), scan_line(1, 5)).unwrap();
        std::fs::write(&path, scan_line(2, 5)).unwrap();
        let outbox = Outbox::new(&path, 1);
        let at = outbox.read(None, 100).unwrap()[1].end;
        cut_back_last_line_and_append(&path, &[scan_line(3, 50)]);
        assert_eq!(scans(&outbox.read(Some(at), 100).unwrap()), [3]);
    }

    #[test]
    fn a_position_from_an_older_checkpoint_is_moved_to_a_line_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scans.jsonl");
        std::fs::write(&path, format!("{}{}", scan_line(1, 5), scan_line(2, 5))).unwrap();
        let outbox = Outbox::new(&path, 0);
        let first = outbox.read(None, 1).unwrap()[0].end;
        let old = |offset| Position {
            line: None,
            offset,
            ..first
        };
        assert_eq!(
            scans(&outbox.read(Some(old(first.offset + 3)), 10).unwrap()),
            [2]
        );
        assert!(outbox.read(Some(old(10_000)), 10).unwrap().is_empty());
        // Written before the field existed, it still reads.
        let json = r#"{"position":{"inode":7,"first_line_crc":1,"offset":3},"last_key":null}"#;
        let checkpoint: Checkpoint = serde_json::from_str(json).unwrap();
        assert_eq!(checkpoint.position.unwrap().line, None);
    }

    #[test]
    fn a_checkpoint_that_cannot_be_stored_is_retried_and_reported_sparingly() {
        let start = Instant::now();
        let ms = |n: u64| start + Duration::from_millis(n);
        let mut schedule = SaveSchedule::new(
            Duration::from_millis(500),
            Duration::from_secs(5),
            Duration::from_secs(60),
            start,
        );
        assert!(schedule.due(ms(0), 0), "nothing in flight: at once");
        assert!(!schedule.due(ms(100), 3) && schedule.due(ms(500), 3));
        let failed: Result<()> = Err(anyhow::anyhow!("cannot write /state/checkpoint.json"));
        // The uplink's loop turns every 50 ms for two minutes with the disk failing.
        let (mut attempts, mut reports) = (0, Vec::new());
        for step in 0..2400 {
            let now = ms(step * 50);
            if schedule.due(now, 0) {
                attempts += 1;
                reports.extend(schedule.tried(now, &failed));
            }
        }
        assert_eq!(attempts, 24, "one attempt every 5 s");
        assert_eq!(reports.len(), 2, "{reports:?}");
        assert_eq!(
            reports[1],
            SaveReport::Failing {
                error: "cannot write /state/checkpoint.json".into(),
                times: 12
            }
        );
        assert_eq!(
            schedule.tried(ms(120_000), &Ok(())),
            Some(SaveReport::Recovered { failures: 24 })
        );
        assert!(schedule.due(ms(120_000), 0));
    }

    #[test]
    fn the_checkpoint_round_trips_and_a_missing_one_is_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/checkpoint.json");
        assert_eq!(Checkpoint::load(&path).unwrap(), Checkpoint::default());
        let checkpoint = Checkpoint {
            position: Some(Position {
                inode: 7,
                first_line_crc: Some(99),
                offset: 1234,
                line: Some(LineMark { len: 20, crc: 5 }),
            }),
            last_key: Some("kiosk/b/3".into()),
        };
        checkpoint.save(&path).unwrap();
        assert_eq!(Checkpoint::load(&path).unwrap(), checkpoint);
        std::fs::write(&path, b"{not json").unwrap();
        let err = Checkpoint::load(&path).unwrap_err().to_string();
        assert!(err.contains("checkpoint.json"), "{err}");
    }
}
