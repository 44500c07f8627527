//! The scan log read as an outbox: complete lines in order across rotation (`scans.jsonl.N` …
//! `.1`, then `scans.jsonl`), from a position that survives restarts, rotation and the files'
//! renames, and a checkpoint of what the broker has acknowledged, stored atomically.
//!
//! A position names a file by its inode and the checksum of its first line (an inode freed by a
//! dropped file may be reused by the next new log, whose first line differs), and a byte offset
//! in it just after a complete line. When the file a position names is gone (rotated past `keep`
//! while the uplink was behind), reading starts at the oldest file left, and the loss is logged.

use std::fs::File;
use std::io::{BufRead, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::catalogue::write_atomically;

/// Where reading stands in the log: after the line that ends at `offset` of the file named by
/// `inode` and `first_line_crc`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub inode: u64,
    /// CRC-32 of the file's first line (with its newline); `None` before anything was read.
    pub first_line_crc: Option<u32>,
    pub offset: u64,
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
            Some(position) => match files.iter().position(|f| {
                f.inode == position.inode
                    && (position.first_line_crc.is_none()
                        || f.first_line_crc == position.first_line_crc)
                    && position.offset <= f.size
            }) {
                Some(index) => (index, position.offset),
                None => {
                    tracing::warn!(
                        "scan log {}: the file the uplink had reached is gone (rotated away \
                         while the broker was unreachable, or replaced); scans in it after the \
                         last acknowledged one are lost; going on from the oldest file left",
                        self.path.display()
                    );
                    (0, 0)
                }
            },
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
    use crate::scanlog::ScanLog;

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
