//! The `keys` verbs when the table cannot be written: a full disk, a
//! read-only data directory. Each must fail with a message that names the
//! table, exit non-zero (not die of a signal), print no key, and leave the
//! table byte-identical with no temporary or lock file behind.
//!
//! Tests may run as root, where permission bits stop nothing, so neither
//! case relies on them alone: a full disk is `RLIMIT_FSIZE` = 0 (`ulimit
//! -f 0`, enforced for root too; SIGXFSZ ignored so the write fails with an
//! error as it would with ENOSPC instead of killing the process), and a
//! read-only directory is a read-only bind mount in a user namespace when
//! running as root (`unshare -rm`), permission bits otherwise.
#![cfg(unix)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_securechat-server");

fn run(command: &mut Command) -> Output {
    command.env("RUST_LOG", "warn").output().unwrap()
}

/// A data directory with a table of one key; returns its id.
fn table_with_one_key(dir: &Path) -> String {
    let out = run(Command::new(BIN).args([
        "keys",
        "--data-dir",
        dir.to_str().unwrap(),
        "create",
        "--name",
        "first",
    ]));
    assert!(out.status.success(), "{out:?}");
    let key = String::from_utf8(out.stdout).unwrap();
    let key = key.trim_end().lines().last().unwrap();
    key.trim_start_matches("sk-sc-")
        .split('-')
        .next()
        .unwrap()
        .to_string()
}

/// The writing verbs, as arguments after `keys --data-dir DIR`.
fn writing_verbs(id: &str) -> Vec<Vec<String>> {
    let v = |args: &[&str]| args.iter().map(|a| a.to_string()).collect();
    vec![
        v(&["create", "--name", "second", "--tier", "Admin"]),
        v(&["suspend", id]),
        v(&["rotate", id, "--grace", "1h"]),
        v(&["revoke", id]),
    ]
}

fn assert_failed_cleanly(dir: &Path, before: &[u8], verb: &[String], out: &Output, cause: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let what = format!("{verb:?}: {stderr}");
    assert_eq!(out.status.code(), Some(1), "{what} (killed by a signal?)");
    let table = dir.join("api-keys.json");
    assert!(
        stderr.contains(&table.display().to_string()) && stderr.contains("key table"),
        "the message does not name the key table: {what}"
    );
    assert!(
        stderr.contains(cause),
        "the cause {cause:?} is missing: {what}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("sk-sc-") && !stdout.contains("created") && !stdout.contains("rotated"),
        "reported success or printed a key that was never saved: {stdout}"
    );
    assert_eq!(
        std::fs::read(&table).unwrap(),
        before,
        "table changed: {what}"
    );
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["api-keys.json"], "left behind: {what}");
}

#[test]
fn a_full_disk_fails_every_writing_verb_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let id = table_with_one_key(dir.path());
    let before = std::fs::read(dir.path().join("api-keys.json")).unwrap();
    for verb in writing_verbs(&id) {
        let out = run(Command::new("sh")
            .arg("-c")
            .arg(r#"trap '' XFSZ; ulimit -f 0 && exec "$0" "$@""#)
            .arg(BIN)
            .args(["keys", "--data-dir", dir.path().to_str().unwrap()])
            .args(&verb));
        assert_failed_cleanly(dir.path(), &before, &verb, &out, "File too large");
    }
    // The same verbs work once there is room again.
    let out = run(Command::new(BIN)
        .args(["keys", "--data-dir", dir.path().to_str().unwrap()])
        .args(["suspend", &id]));
    assert!(out.status.success(), "{out:?}");
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

#[test]
fn a_read_only_data_dir_fails_every_writing_verb_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap().to_string();
    let id = table_with_one_key(dir.path());
    let before = std::fs::read(dir.path().join("api-keys.json")).unwrap();
    let root = running_as_root();
    // Root ignores permission bits: mount the directory read-only in a
    // private mount namespace instead.
    let in_read_only_dir = |args: &[String]| -> Output {
        if root {
            run(Command::new("unshare")
                .args(["--map-root-user", "--mount", "sh", "-c"])
                .arg(r#"mount --bind -o ro "$1" "$1" && shift && exec "$@""#)
                .args(["sh", &d, BIN, "keys", "--data-dir", &d])
                .args(args))
        } else {
            run(Command::new(BIN)
                .args(["keys", "--data-dir", &d])
                .args(args))
        }
    };
    let cause = if root {
        let probe = Command::new("unshare")
            .args(["--map-root-user", "--mount", "true"])
            .output();
        if !probe.is_ok_and(|p| p.status.success()) {
            // A root container without user namespaces: nothing here can
            // make a directory read-only. The full-disk test still covers
            // a failing write.
            eprintln!("SKIPPED: running as root without user namespaces");
            return;
        }
        "Read-only file system"
    } else {
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
        "Permission denied"
    };
    for verb in writing_verbs(&id) {
        let out = in_read_only_dir(&verb);
        assert_failed_cleanly(dir.path(), &before, &verb, &out, cause);
    }
    // Reading still works.
    let out = in_read_only_dir(&["list".to_string()]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&id));
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
}
