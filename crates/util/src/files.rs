//! Files written atomically: a temporary file in the same folder, synced, renamed over the
//! target, the folder synced, so that a reader or a power cut sees the old file or the new one.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Writes `bytes` to `path` atomically (temporary file in the same folder, fsync, rename, fsync of
/// the folder), so readers see the old file or the new one, never a mix. The file gets the
/// permissions of any newly created file (0666 less the umask), not the temporary file's 0600, so
/// a table an installer writes stays readable by the service.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomically_as(path, bytes, None)
}

/// [`write_atomically`], with the file's permissions set to `mode` whatever the umask (a file
/// another service's user reads, such as the metrics for node-exporter's textfile collector).
pub fn write_atomically_with_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    write_atomically_as(path, bytes, Some(mode))
}

fn write_atomically_as(path: &Path, bytes: &[u8], mode: Option<u32>) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?;
    (|| -> Result<()> {
        // Removed on drop if anything below fails.
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!(".{}.", name.to_string_lossy()))
            .suffix(".tmp")
            .permissions(std::fs::Permissions::from_mode(0o666))
            .tempfile_in(&dir)?;
        if let Some(mode) = mode {
            tmp.as_file()
                .set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
        tmp.write_all(bytes)?;
        tmp.as_file().sync_all()?;
        tmp.persist(path)?;
        // Make the rename itself durable.
        File::open(&dir)?.sync_all()?;
        Ok(())
    })()
    .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_atomic_write_gets_a_new_files_permissions_not_the_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        File::create(&plain).unwrap();
        let atomic = dir.path().join("atomic");
        write_atomically(&atomic, b"table").unwrap();
        let mode = |p: &Path| p.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&atomic), mode(&plain));
        assert_eq!(std::fs::read(&atomic).unwrap(), b"table");
    }
}
