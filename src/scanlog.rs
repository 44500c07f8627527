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
//!   `scans.jsonl.1` → … → `.keep` (the oldest dropped), by atomic renames, the folder fsynced.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

/// An open scan log.
pub struct ScanLog {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
    keep: u32,
}

impl ScanLog {
    /// Opens (creating it and its folder if needed) the log at `path`, repairing a torn tail.
    pub fn open(path: &Path, max_bytes: u64, keep: u32) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create scan log folder {}", dir.display()))?;
        }
        let file = open_append(path)?;
        let mut log = ScanLog {
            path: path.to_path_buf(),
            file,
            size: 0,
            max_bytes,
            keep,
        };
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

    fn rotated(&self, n: u32) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn rotate(&mut self) -> Result<()> {
        let context = || format!("cannot rotate scan log {}", self.path.display());
        if self.keep == 0 {
            self.file.set_len(0).with_context(context)?;
            self.file.seek(SeekFrom::End(0)).with_context(context)?;
        } else {
            // Dropping the oldest first keeps every step a plain rename.
            let oldest = self.rotated(self.keep);
            if oldest.exists() {
                std::fs::remove_file(&oldest).with_context(context)?;
            }
            for n in (1..self.keep).rev() {
                let from = self.rotated(n);
                if from.exists() {
                    std::fs::rename(&from, self.rotated(n + 1)).with_context(context)?;
                }
            }
            std::fs::rename(&self.path, self.rotated(1)).with_context(context)?;
            self.file = open_append(&self.path)?;
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .with_context(context)?;
            }
        }
        self.size = 0;
        Ok(())
    }
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
