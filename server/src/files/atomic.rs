//! Crash-safe file replacement: write a temporary file in the same
//! directory, fsync it, rename it over the target, fsync the directory. A
//! reader (or a crash) sees the old file or the new one, never half of one.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use anyhow::Context;

/// Replaces `path` with `contents`; `private` makes it owner-only (0600).
pub fn write_atomic(path: &Path, contents: &[u8], private: bool) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .context("path has no file name")?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    // Until the rename, a failure (full disk, read-only directory) leaves
    // the target as it was; say so, the reader is deciding what to fix.
    let unchanged = |step: &str| format!("{step} {} ({name} is unchanged)", tmp.display());
    let result = (|| {
        let mut options = OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(if private { 0o600 } else { 0o644 });
        }
        let mut file = options.open(&tmp).with_context(|| unchanged("creating"))?;
        file.write_all(contents)
            .with_context(|| unchanged("writing"))?;
        file.sync_all().with_context(|| unchanged("flushing"))?;
        fs::rename(&tmp, path)
            .with_context(|| format!("replacing {} ({name} is unchanged)", path.display()))?;
        // The rename itself is durable only once the directory is synced.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| {
                format!(
                    "replaced {} but could not sync {}: the change may not survive a crash",
                    path.display(),
                    dir.display()
                )
            })?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.json");
        write_atomic(&path, b"one", true).unwrap();
        write_atomic(&path, b"two", true).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }
}
