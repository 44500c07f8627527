//! The scan log: one JSON line per scan (time, ids and scores, latency per stage; never image
//! data), the record of what was scanned and what was recommended.
//!
//! Durability policy:
//! - each line is appended with one `write` to a file opened in append mode, then `fdatasync`ed,
//!   before the scan's screen is shown (scans come seconds apart, the sync costs ~ms); a write
//!   that fails part-way (a full disk) is cut back, so no half line stays in the file;
//! - a power cut can at worst leave a torn last line: on open, a tail without its newline is cut
//!   back to the last complete line (and logged), so the file always parses as JSON lines;
//! - before a line would take the file past `max_bytes`, it is rotated: `scans.jsonl` →
//!   `scans.jsonl.1` → … → `.keep` (the oldest dropped). The live file is first linked to
//!   `scans.jsonl.0`, so nothing is dropped unless that succeeded; then every step is a rename,
//!   and a new empty live file is renamed into place (readers always find the live name);
//! - a live file moved away or deleted by someone else (an operator, logrotate) is noticed at
//!   the next line, which starts a new file; a live file replaced by another is appended to.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

/// An open scan log.
pub struct ScanLog {
    path: PathBuf,
    file: File,
    /// The open file's device and inode, to notice the live name moving to another file.
    identity: (u64, u64),
    size: u64,
    max_bytes: u64,
    keep: u32,
}

impl ScanLog {
    /// Opens (creating it and its folder if needed) the log at `path`, repairing a torn tail and
    /// finishing a rotation a power cut interrupted.
    pub fn open(path: &Path, max_bytes: u64, keep: u32) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create scan log folder {}", dir.display()))?;
        }
        let file = open_append(path)?;
        let mut log = ScanLog {
            path: path.to_path_buf(),
            identity: identity_of(&file, path)?,
            file,
            size: 0,
            max_bytes,
            keep,
        };
        log.finish_interrupted_rotation()?;
        log.size = log.repair_tail()?;
        Ok(log)
    }

    /// Cuts a final line that lacks its newline; returns the resulting size.
    fn repair_tail(&mut self) -> Result<u64> {
        let bytes = std::fs::read(&self.path)
            .with_context(|| format!("cannot read scan log {}", self.path.display()))?;
        if bytes.is_empty() || bytes.ends_with(b"\n") {
            return Ok(bytes.len() as u64);
        }
        let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        tracing::warn!(
            "scan log {}: dropped a torn last line ({} bytes) left by an interrupted write",
            self.path.display(),
            bytes.len() - keep
        );
        self.file
            .set_len(keep as u64)
            .and_then(|()| self.file.sync_data())
            .with_context(|| format!("cannot repair scan log {}", self.path.display()))?;
        Ok(keep as u64)
    }

    /// Where the log is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `record` as one line and syncs it to disk, rotating first if needed.
    pub fn append<T: Serialize>(&mut self, record: &T) -> Result<()> {
        let mut line = serde_json::to_vec(record).context("cannot encode scan record")?;
        line.push(b'\n');
        self.follow_live_name()?;
        if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        let write = |file: &mut File| -> std::io::Result<()> {
            file.write_all(&line)?;
            file.sync_data()
        };
        if let Err(e) = write(&mut self.file) {
            // A write cut short (a full disk) must not leave half a line for the next one to
            // follow: the file is cut back to its last whole line.
            if let Err(cut) = self.file.set_len(self.size) {
                tracing::error!(
                    "scan log {}: cannot cut a failed write back ({cut}); it is repaired when \
                     the log is next opened",
                    self.path.display()
                );
            }
            return Err(e)
                .with_context(|| format!("cannot write scan log {}", self.path.display()));
        }
        self.size += line.len() as u64;
        Ok(())
    }

    /// Reopens the live name when it no longer names the open file (moved, deleted or replaced
    /// by someone else), so that no line goes to a file nobody will read.
    fn follow_live_name(&mut self) -> Result<()> {
        let live = match std::fs::metadata(&self.path) {
            Ok(meta) => Some((meta.dev(), meta.ino())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot read scan log {}", self.path.display()))
            }
        };
        if live == Some(self.identity) {
            return Ok(());
        }
        tracing::warn!(
            "scan log {} was {} by something else: {}",
            self.path.display(),
            if live.is_some() {
                "replaced"
            } else {
                "moved or deleted"
            },
            if live.is_some() {
                "appending to the new file"
            } else {
                "starting a new one"
            }
        );
        self.file = open_append(&self.path)?;
        self.identity = identity_of(&self.file, &self.path)?;
        self.size = self.repair_tail()?;
        Ok(())
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn rotate(&mut self) -> Result<()> {
        let path = self.path.clone();
        let context = || format!("cannot rotate scan log {}", path.display());
        if self.keep == 0 {
            self.file.set_len(0).with_context(context)?;
            self.file.seek(SeekFrom::End(0)).with_context(context)?;
            self.size = 0;
            return Ok(());
        }
        // A second name for the live file first: if that fails, nothing has moved.
        let linked = self.rotated(0);
        remove_if_present(&linked).with_context(context)?;
        std::fs::hard_link(&self.path, &linked).with_context(context)?;
        // Each rename replaces its target, so the oldest goes only as the next one takes its name.
        for n in (1..self.keep).rev() {
            let from = self.rotated(n);
            if from.exists() {
                std::fs::rename(&from, self.rotated(n + 1)).with_context(context)?;
            }
        }
        std::fs::rename(&linked, self.rotated(1)).with_context(context)?;
        self.start_new_live_file().with_context(context)
    }

    /// Puts a new empty file at the live name (a rename, so readers always find one) and
    /// appends to it from now on.
    fn start_new_live_file(&mut self) -> Result<()> {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let fresh = tempfile::Builder::new()
            .prefix(".scan-log.")
            .suffix(".tmp")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .tempfile_in(&dir)?;
        let file = fresh.persist(&self.path)?;
        File::open(&dir)?.sync_all()?;
        self.file = open_append(&self.path)?;
        drop(file);
        self.identity = identity_of(&self.file, &self.path)?;
        self.size = 0;
        Ok(())
    }

    /// A power cut in the middle of [`Self::rotate`] leaves the live file linked as `.0`, or
    /// named `.1` as well: the rotation is finished where the older files had moved on.
    fn finish_interrupted_rotation(&mut self) -> Result<()> {
        let path = self.path.clone();
        let context = || format!("cannot finish rotating scan log {}", path.display());
        if self.keep == 0 {
            return Ok(());
        }
        let same_as_live = |path: &Path| {
            std::fs::metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == self.identity)
        };
        let linked = self.rotated(0);
        if same_as_live(&linked) {
            if self.rotated(1).exists() {
                // The older files had not all moved on: the live file stays live for now.
                std::fs::remove_file(&linked).with_context(context)?;
            } else {
                std::fs::rename(&linked, self.rotated(1)).with_context(context)?;
            }
        }
        if same_as_live(&self.rotated(1)) {
            tracing::warn!(
                "scan log {}: finishing a rotation a power cut interrupted",
                self.path.display()
            );
            self.start_new_live_file().with_context(context)?;
        }
        Ok(())
    }
}

fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn identity_of(file: &File, path: &Path) -> Result<(u64, u64)> {
    let meta = file
        .metadata()
        .with_context(|| format!("cannot read scan log {}", path.display()))?;
    Ok((meta.dev(), meta.ino()))
}

fn open_append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open scan log {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn appends_lines_and_rotates_by_size_keeping_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/scans.jsonl");
        let mut log = ScanLog::open(&path, 4096, 2).unwrap();
        let padding = "x".repeat(1000);
        for scan in 0..13u32 {
            log.append(&serde_json::json!({ "scan": scan, "pad": padding }))
                .unwrap();
        }
        // ~1 KiB lines, 4 per file: 12 → .2 lost [0..4], .2 = [4..8], .1 = [8..12], current = [12].
        let scans = |p: &Path| -> Vec<u64> {
            lines(p)
                .iter()
                .map(|v| v["scan"].as_u64().unwrap())
                .collect()
        };
        assert_eq!(scans(&path), [12]);
        assert_eq!(scans(&log.rotated(1)), [8, 9, 10, 11]);
        assert_eq!(scans(&log.rotated(2)), [4, 5, 6, 7]);
        assert!(!log.rotated(3).exists());
        for p in [&path, &log.rotated(1), &log.rotated(2)] {
            assert!(std::fs::metadata(p).unwrap().len() <= 4096);
        }
    }

    fn scans(path: &Path) -> Vec<u64> {
        lines(path)
            .iter()
            .map(|v| v["scan"].as_u64().unwrap())
            .collect()
    }

    #[test]
    fn a_live_file_deleted_or_moved_away_starts_a_new_one_and_loses_nothing_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scans.jsonl");
        let mut log = ScanLog::open(&path, 4096, 2).unwrap();
        let padding = "x".repeat(1000);
        let append = |log: &mut ScanLog, scan: u64| {
            log.append(&serde_json::json!({ "scan": scan, "pad": padding }))
        };
        for scan in 0..=12 {
            append(&mut log, scan).unwrap();
        }
        assert_eq!(scans(&log.rotated(2)), [4, 5, 6, 7]);
        // Deleted: the next line starts a new live file, the rotated files stay as they were.
        std::fs::remove_file(&path).unwrap();
        append(&mut log, 13).unwrap();
        assert_eq!(scans(&path), [13]);
        assert_eq!(scans(&log.rotated(1)), [8, 9, 10, 11]);
        assert_eq!(scans(&log.rotated(2)), [4, 5, 6, 7]);
        // Moved away: it keeps what it held, and every later scan is logged and rotated.
        let moved = dir.path().join("kept-by-operator.jsonl");
        std::fs::rename(&path, &moved).unwrap();
        for scan in 14..=33 {
            append(&mut log, scan).unwrap();
        }
        assert_eq!(scans(&moved), [13]);
        let mut logged = scans(&log.rotated(2));
        logged.extend(scans(&log.rotated(1)));
        logged.extend(scans(&path));
        assert_eq!(logged, (22..=33).collect::<Vec<_>>());
        assert!(!log.rotated(0).exists());
    }

    #[test]
    fn a_live_file_replaced_by_another_is_appended_to() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scans.jsonl");
        let mut log = ScanLog::open(&path, 1 << 20, 2).unwrap();
        log.append(&serde_json::json!({"scan": 1})).unwrap();
        let other = dir.path().join("other");
        std::fs::write(&other, "{\"scan\":7}\n{\"sca").unwrap();
        std::fs::rename(&other, &path).unwrap();
        log.append(&serde_json::json!({"scan": 8})).unwrap();
        assert_eq!(scans(&path), [7, 8]);
    }

    #[test]
    fn a_rotation_cut_by_a_power_cut_is_finished_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scans.jsonl");
        let name = |n: u32| dir.path().join(format!("scans.jsonl.{n}"));
        // Cut after the older files moved on: the live file is also `.0`, `.1` is free.
        std::fs::write(&path, "{\"scan\":3}\n").unwrap();
        std::fs::write(name(2), "{\"scan\":1}\n").unwrap();
        std::fs::hard_link(&path, name(0)).unwrap();
        let mut log = ScanLog::open(&path, 1 << 20, 2).unwrap();
        log.append(&serde_json::json!({"scan": 4})).unwrap();
        assert_eq!(scans(&name(1)), [3]);
        assert_eq!(scans(&name(2)), [1]);
        assert_eq!(scans(&path), [4]);
        assert!(!name(0).exists());
        drop(log);
        // Cut after the live file was named `.1`, before the new live file: it is put in place.
        std::fs::remove_file(&path).unwrap();
        std::fs::hard_link(name(1), &path).unwrap();
        let mut log = ScanLog::open(&path, 1 << 20, 2).unwrap();
        log.append(&serde_json::json!({"scan": 5})).unwrap();
        assert_eq!(scans(&name(1)), [3]);
        assert_eq!(scans(&path), [5]);
    }

    #[test]
    fn a_torn_last_line_is_cut_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scans.jsonl");
        std::fs::write(&path, "{\"scan\":1}\n{\"scan\":2}\n{\"sca").unwrap();
        let mut log = ScanLog::open(&path, 1 << 20, 1).unwrap();
        log.append(&serde_json::json!({"scan": 3})).unwrap();
        let scans: Vec<_> = lines(&path).iter().map(|v| v["scan"].clone()).collect();
        assert_eq!(scans, [1, 2, 3]);
    }

    #[test]
    fn keep_zero_truncates_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scans.jsonl");
        let mut log = ScanLog::open(&path, 4096, 0).unwrap();
        for scan in 0..5 {
            log.append(&serde_json::json!({ "scan": scan, "pad": "y".repeat(1500) }))
                .unwrap();
        }
        // ~1.5 KiB lines, 2 fit: the 3rd and the 5th found the file full and emptied it.
        let scans: Vec<_> = lines(&path).iter().map(|v| v["scan"].clone()).collect();
        assert_eq!(scans, [4]);
        assert!(!log.rotated(1).exists());
    }
}
