//! The kubelet's AtomicWriter (pkg/volume/util/atomic_writer.go), which
//! every Secret, ConfigMap, downward-API and projected volume goes through.
//! A consumer watching such a directory sees this layout:
//!
//! ```text
//! DIR/..2026_11_26_15_04_05.123456789/tls.crt   the files of one generation
//! DIR/..data -> ..2026_11_26_15_04_05.123456789  the generation in force
//! DIR/tls.crt -> ..data/tls.crt                  what the consumer opens
//! ```
//!
//! An update writes a whole new generation directory, points a temporary
//! `..data_tmp` symlink at it and renames that over `..data` (one atomic
//! step: a reader resolving `..data` sees the old generation or the new
//! one, never a mix), then adds top-level symlinks for new names, removes
//! those of names no longer in the set, and deletes the old generation.
//! Files are never modified in place.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};

use chrono::{DateTime, Utc};

/// The symlink naming the generation in force.
pub const DATA_DIR: &str = "..data";
/// The symlink renamed over [`DATA_DIR`].
pub const DATA_TMP: &str = "..data_tmp";
/// The kubelet's default file mode (`defaultMode: 420`).
pub const DEFAULT_MODE: u32 = 0o644;

/// One file of the set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProjection {
    pub data: Vec<u8>,
    /// Permission bits (e.g. 0o644, 0o400).
    pub mode: u32,
}

impl FileProjection {
    pub fn new(data: impl Into<Vec<u8>>) -> Self {
        Self {
            data: data.into(),
            mode: DEFAULT_MODE,
        }
    }
}

/// Relative path (as the Secret / ConfigMap key or item path) -> content.
pub type Payload = BTreeMap<String, FileProjection>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid path {path:?} in the payload: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("{path:?} is both a file and a directory in the payload")]
    Conflict { path: String },
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Error + use<> {
    let path = path.to_path_buf();
    move |source| Error::Io {
        action,
        path,
        source,
    }
}

/// What a write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The set equals the generation in force; nothing was touched (the
    /// kubelet skips such writes too, so consumers see no event).
    Unchanged,
    /// A new generation directory (its name) is in force.
    Written { generation: String },
}

/// Writes payloads into one target directory.
#[derive(Debug, Clone)]
pub struct AtomicWriter {
    dir: PathBuf,
}

impl AtomicWriter {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The generation directory `..data` points at, if any.
    pub fn current_generation(&self) -> Option<String> {
        let target = fs::read_link(self.dir.join(DATA_DIR)).ok()?;
        Some(target.to_string_lossy().into_owned())
    }

    /// Makes `payload` the directory's content; `now` names the generation.
    pub fn write(&self, payload: &Payload, now: DateTime<Utc>) -> Result<Outcome> {
        validate(payload)?;
        fs::create_dir_all(&self.dir).map_err(io_err("creating", &self.dir))?;
        let old_generation = self.current_generation();
        let old_files = match &old_generation {
            Some(g) => files_under(&self.dir.join(g))?,
            None => BTreeSet::new(),
        };
        if let Some(g) = &old_generation
            && same_content(&self.dir.join(g), &old_files, payload)?
        {
            return Ok(Outcome::Unchanged);
        }

        let generation = self.new_generation_dir(now)?;
        let generation_path = self.dir.join(&generation);
        for (path, file) in payload {
            write_file(&generation_path.join(path), file)?;
        }

        // `..data_tmp` left over from an interrupted write is replaced.
        let tmp = self.dir.join(DATA_TMP);
        match fs::remove_file(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io_err("removing", &tmp)(e));
            }
            _ => {}
        }
        symlink(Path::new(&generation), &tmp)?;
        let data = self.dir.join(DATA_DIR);
        fs::rename(&tmp, &data).map_err(io_err("renaming ..data_tmp over", &data))?;

        // Top-level names: new ones get a symlink through ..data; names no
        // longer in the set lose theirs. Existing ones already resolve to
        // the new generation through ..data.
        let new_top = top_level(payload.keys().map(String::as_str));
        for name in &new_top {
            let visible = self.dir.join(name);
            if fs::symlink_metadata(&visible).is_err() {
                symlink(&Path::new(DATA_DIR).join(name), &visible)?;
            }
        }
        for name in top_level(old_files.iter().map(String::as_str)) {
            if !new_top.contains(&name) {
                let visible = self.dir.join(&name);
                fs::remove_file(&visible).map_err(io_err("removing", &visible))?;
            }
        }
        if let Some(old) = old_generation {
            let old_path = self.dir.join(old);
            fs::remove_dir_all(&old_path).map_err(io_err("removing", &old_path))?;
        }
        Ok(Outcome::Written { generation })
    }

    /// Creates `..YYYY_MM_DD_HH_MM_SS.NNNNNNNNN` (the kubelet's timestamp
    /// prefix, made unique with the nanoseconds).
    fn new_generation_dir(&self, now: DateTime<Utc>) -> Result<String> {
        let stamp = now.format("%Y_%m_%d_%H_%M_%S");
        let mut nanos = now.timestamp_subsec_nanos();
        loop {
            let name = format!("..{stamp}.{nanos:09}");
            let path = self.dir.join(&name);
            match fs::create_dir(&path) {
                Ok(()) => {
                    set_mode(&path, 0o755)?;
                    return Ok(name);
                }
                // Two writes within one nanosecond tick, or a clock that
                // went back: take the next free name.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    nanos = (nanos + 1) % 1_000_000_000;
                }
                Err(e) => return Err(io_err("creating", &path)(e)),
            }
        }
    }
}

/// The kubelet's path rules: relative, no `..` element, not starting with
/// `..` (that prefix is reserved for the writer's own entries), and no
/// path that is both a file and a directory.
pub fn validate(payload: &Payload) -> Result<()> {
    for path in payload.keys() {
        let invalid = |reason| Error::InvalidPath {
            path: path.clone(),
            reason,
        };
        if path.is_empty() {
            return Err(invalid("empty"));
        }
        if path.len() > 4096 {
            return Err(invalid("longer than 4096 bytes"));
        }
        if path.starts_with("..") {
            return Err(invalid("must not start with '..'"));
        }
        let p = Path::new(path);
        if p.is_absolute() {
            return Err(invalid("must be relative"));
        }
        if path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(invalid("empty, '.' or '..' element"));
        }
        if !p.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(invalid("must be a plain relative path"));
        }
    }
    for path in payload.keys() {
        let mut prefix = String::new();
        for component in path.split('/').take(path.split('/').count() - 1) {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(component);
            if payload.contains_key(&prefix) {
                return Err(Error::Conflict { path: prefix });
            }
        }
    }
    Ok(())
}

/// First path elements, each once.
fn top_level<'a>(paths: impl Iterator<Item = &'a str>) -> BTreeSet<String> {
    paths
        .filter_map(|p| p.split('/').next())
        .map(str::to_string)
        .collect()
}

/// Relative paths of the regular files under `root`.
fn files_under(root: &Path) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).map_err(io_err("listing", &dir))? {
            let entry = entry.map_err(io_err("listing", &dir))?;
            let path = entry.path();
            let kind = entry.file_type().map_err(io_err("inspecting", &path))?;
            if kind.is_dir() {
                stack.push(path);
            } else if let Ok(relative) = path.strip_prefix(root) {
                out.insert(relative.to_string_lossy().into_owned());
            }
        }
    }
    Ok(out)
}

/// Whether the generation at `root` (holding `files`) already is `payload`.
fn same_content(root: &Path, files: &BTreeSet<String>, payload: &Payload) -> Result<bool> {
    if files.len() != payload.len() || !payload.keys().all(|k| files.contains(k)) {
        return Ok(false);
    }
    for (path, file) in payload {
        let full = root.join(path);
        let bytes = fs::read(&full).map_err(io_err("reading", &full))?;
        if bytes != file.data || mode_of(&full)? != file.mode & 0o7777 {
            return Ok(false);
        }
    }
    Ok(true)
}

fn write_file(path: &Path, file: &FileProjection) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
    }
    let mut out = fs::File::create(path).map_err(io_err("creating", path))?;
    out.write_all(&file.data).map_err(io_err("writing", path))?;
    set_mode(path, file.mode)
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777))
        .map_err(io_err("setting the mode of", path))
}

#[cfg(unix)]
fn mode_of(path: &Path) -> Result<u32> {
    use std::os::unix::fs::PermissionsExt;
    Ok(fs::metadata(path)
        .map_err(io_err("inspecting", path))?
        .permissions()
        .mode()
        & 0o7777)
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> Result<()> {
    std::os::unix::fs::symlink(target, link).map_err(io_err("creating the symlink", link))
}

#[cfg(not(unix))]
compile_error!("the kubelet layout needs symlinks; securechat-projector is Unix-only");

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(entries: &[(&str, &str)]) -> Payload {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), FileProjection::new(v.as_bytes())))
            .collect()
    }

    fn names(dir: &Path) -> BTreeSet<String> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    fn generations(dir: &Path) -> Vec<String> {
        names(dir)
            .into_iter()
            .filter(|n| n.starts_with("..") && n != DATA_DIR)
            .collect()
    }

    fn is_generation_name(name: &str) -> bool {
        // ..YYYY_MM_DD_HH_MM_SS.NNNNNNNNN
        let b = name.as_bytes();
        name.len() == 31
            && name.starts_with("..")
            && b[31 - 10] == b'.'
            && [6, 9, 12, 15, 18].iter().all(|&i| b[i] == b'_')
            && name[2..].bytes().filter(u8::is_ascii_digit).count() == 23
    }

    #[test]
    fn first_write_creates_the_kubelet_layout() {
        let dir = tempfile::tempdir().unwrap();
        let w = AtomicWriter::new(dir.path().join("tls"));
        let now = "2026-11-26T15:04:05.123456789Z".parse().unwrap();
        let outcome = w
            .write(&payload(&[("tls.crt", "CERT"), ("tls.key", "KEY")]), now)
            .unwrap();
        let generation = "..2026_11_26_15_04_05.123456789".to_string();
        assert_eq!(
            outcome,
            Outcome::Written {
                generation: generation.clone()
            }
        );
        assert!(is_generation_name(&generation));
        let root = w.dir();
        assert_eq!(
            names(root),
            BTreeSet::from([
                generation.clone(),
                DATA_DIR.to_string(),
                "tls.crt".to_string(),
                "tls.key".to_string()
            ])
        );
        assert_eq!(
            fs::read_link(root.join(DATA_DIR)).unwrap(),
            PathBuf::from(&generation),
            "..data is relative, so the directory can be mounted anywhere"
        );
        assert_eq!(
            fs::read_link(root.join("tls.crt")).unwrap(),
            PathBuf::from("..data/tls.crt")
        );
        assert_eq!(fs::read(root.join("tls.key")).unwrap(), b"KEY");
        assert_eq!(
            mode_of(&root.join(&generation).join("tls.key")).unwrap(),
            0o644
        );
    }

    #[test]
    fn an_update_swaps_generations_and_removed_files_disappear() {
        let dir = tempfile::tempdir().unwrap();
        let w = AtomicWriter::new(dir.path());
        let t0: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        w.write(&payload(&[("a", "1"), ("b", "2"), ("sub/c", "3")]), t0)
            .unwrap();
        let first = w.current_generation().unwrap();
        let mut next = payload(&[("a", "10"), ("d", "4")]);
        next.get_mut("d").unwrap().mode = 0o400;
        let outcome = w.write(&next, t0 + chrono::Duration::seconds(1)).unwrap();
        let second = w.current_generation().unwrap();
        assert_eq!(
            outcome,
            Outcome::Written {
                generation: second.clone()
            }
        );
        assert_ne!(first, second);
        assert_eq!(
            generations(w.dir()),
            vec![second.clone()],
            "old generation removed"
        );
        assert_eq!(
            names(w.dir()),
            BTreeSet::from([second.clone(), DATA_DIR.to_string(), "a".into(), "d".into()]),
            "b and sub are gone, no ..data_tmp left"
        );
        assert_eq!(fs::read(w.dir().join("a")).unwrap(), b"10");
        assert_eq!(mode_of(&w.dir().join(&second).join("d")).unwrap(), 0o400);
        assert!(fs::symlink_metadata(w.dir().join("b")).is_err());
    }

    #[test]
    fn nested_paths_get_one_top_level_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let w = AtomicWriter::new(dir.path());
        w.write(&payload(&[("conf/app/x.yaml", "x")]), Utc::now())
            .unwrap();
        assert_eq!(
            fs::read_link(w.dir().join("conf")).unwrap(),
            PathBuf::from("..data/conf")
        );
        assert_eq!(fs::read(w.dir().join("conf/app/x.yaml")).unwrap(), b"x");
    }

    #[test]
    fn an_unchanged_payload_is_not_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let w = AtomicWriter::new(dir.path());
        let p = payload(&[("a", "1")]);
        w.write(&p, Utc::now()).unwrap();
        let before = w.current_generation();
        assert_eq!(w.write(&p, Utc::now()).unwrap(), Outcome::Unchanged);
        assert_eq!(w.current_generation(), before);
        let mut other_mode = p.clone();
        other_mode.get_mut("a").unwrap().mode = 0o600;
        assert!(matches!(
            w.write(&other_mode, Utc::now()).unwrap(),
            Outcome::Written { .. }
        ));
    }

    #[test]
    fn writes_in_the_same_nanosecond_get_distinct_generations() {
        let dir = tempfile::tempdir().unwrap();
        let w = AtomicWriter::new(dir.path());
        let now: DateTime<Utc> = "2026-01-01T00:00:00.5Z".parse().unwrap();
        w.write(&payload(&[("a", "1")]), now).unwrap();
        let first = w.current_generation().unwrap();
        // The first generation's name is taken, and so is the next one (a
        // leftover directory): the write moves on to a free name.
        fs::create_dir(w.dir().join("..2026_01_01_00_00_00.500000001")).unwrap();
        w.write(&payload(&[("a", "2")]), now).unwrap();
        assert_ne!(w.current_generation().unwrap(), first);
        assert_eq!(
            w.current_generation().unwrap(),
            "..2026_01_01_00_00_00.500000002"
        );
        assert_eq!(fs::read(w.dir().join("a")).unwrap(), b"2");
    }

    #[test]
    fn bad_paths_are_refused_before_anything_is_written() {
        for (bad, why) in [
            ("", "empty"),
            ("/etc/passwd", "must be relative"),
            ("../escape", "must not start with '..'"),
            ("a/../../escape", "'..' element"),
            ("..data", "must not start with '..'"),
            ("a//b", "empty"),
            ("./a", "'.'"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let w = AtomicWriter::new(dir.path().join("t"));
            let err = w.write(&payload(&[(bad, "x")]), Utc::now()).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidPath { reason, .. } if reason.contains(why)),
                "{bad:?}: {err}"
            );
            assert!(!w.dir().exists(), "{bad:?}: nothing created");
        }
        let err = validate(&payload(&[("a", "1"), ("a/b", "2")])).unwrap_err();
        assert!(matches!(err, Error::Conflict { path } if path == "a"));
    }

    #[test]
    fn a_reader_never_sees_files_of_two_generations() {
        let dir = tempfile::tempdir().unwrap();
        let w = AtomicWriter::new(dir.path());
        let gen_payload = |n: u32| payload(&[("x", &n.to_string()), ("y", &n.to_string())]);
        w.write(&gen_payload(0), Utc::now()).unwrap();
        let root = w.dir().to_path_buf();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut consistent = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // Resolve ..data once, then read both files through it,
                    // as a careful consumer does.
                    let Ok(generation) = fs::read_link(root.join(DATA_DIR)) else {
                        continue;
                    };
                    let g = root.join(generation);
                    if let (Ok(x), Ok(y)) = (fs::read(g.join("x")), fs::read(g.join("y"))) {
                        assert_eq!(x, y, "files of two generations");
                        consistent += 1;
                    }
                }
                consistent
            })
        };
        for n in 1..300 {
            w.write(&gen_payload(n), Utc::now()).unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
        assert_eq!(generations(w.dir()).len(), 1);
        assert_eq!(fs::read(w.dir().join("x")).unwrap(), b"299");
    }
}
