//! `import-cycles DIR...`: fails when modules of a crate import each other,
//! directly or through others (issue 18: `audit -> state -> session -> auth
//! -> audit` made every change to one of them a change to all four). Each
//! DIR is a crate's `src/`; its `lib.rs` and `main.rs` are checked as the
//! crates they are. Prints every cycle with the lines that tie it and exits
//! 1, or prints one line per crate and exits 0.
//!
//! `make lint` and `make test` run it over server/src and operator/src. It
//! reads only the sources (no rustc, no dependencies), in well under a
//! second for the whole tree.

mod cycles;
mod lexer;
mod modules;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use cycles::Cycle;
use modules::{Disk, ModPath};

fn main() -> ExitCode {
    let dirs: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    if dirs.is_empty() {
        eprintln!("usage: import-cycles SRC_DIR...");
        return ExitCode::from(2);
    }
    let mut failed = false;
    for root in dirs.iter().flat_map(|dir| crate_roots(dir)) {
        match modules::scan(&Disk, &root) {
            Ok(krate) => {
                let found = cycles::find(&krate);
                if found.is_empty() {
                    println!(
                        "import-cycles: {}: no cycle among its {} modules",
                        root.display(),
                        krate.modules.len()
                    );
                }
                for cycle in &found {
                    print!("{}", report(&root, cycle));
                }
                failed |= !found.is_empty();
            }
            Err(e) => {
                eprintln!("import-cycles: {e}");
                return ExitCode::from(2);
            }
        }
    }
    if failed {
        println!(
            "import-cycles: modules must not import each other back; move what both need \
             into a leaf module they can both use"
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// `lib.rs` and `main.rs` of `dir`, those that exist.
fn crate_roots(dir: &Path) -> Vec<PathBuf> {
    ["lib.rs", "main.rs"]
        .iter()
        .map(|name| dir.join(name))
        .filter(|path| path.is_file())
        .collect()
}

fn name(path: &ModPath) -> String {
    if path.is_empty() {
        "crate".into()
    } else {
        path.join("::")
    }
}

/// A cycle as printed: the shortest way round, then each of its imports
/// with the first place that writes it.
fn report(root: &Path, cycle: &Cycle) -> String {
    let way: Vec<String> = cycle.shortest.iter().map(name).collect();
    let mut out = format!("import cycle in {}: {}\n", root.display(), way.join(" -> "));
    if cycle.members.len() + 1 > cycle.shortest.len() {
        let members: Vec<String> = cycle.members.iter().map(name).collect();
        let _ = writeln!(out, "  all on one cycle: {}", members.join(", "));
    }
    for edge in &cycle.edges {
        let more = match edge.count {
            1 => String::new(),
            n => format!(" (and {} more)", n - 1),
        };
        let _ = writeln!(
            out,
            "  {} -> {}: {}:{} {}{more}",
            name(&edge.from),
            name(&edge.to),
            edge.first.file.display(),
            edge.first.line,
            edge.first.text,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modules::fixture::{Fixture, KNOTTED};

    #[test]
    fn a_cycle_is_printed_with_the_lines_that_tie_it() {
        let root = Path::new("src/lib.rs");
        let krate = modules::scan(&Fixture::new(KNOTTED), root).unwrap();
        let printed: Vec<String> = cycles::find(&krate)
            .iter()
            .map(|cycle| report(root, cycle))
            .collect();
        assert_eq!(
            printed.concat(),
            "import cycle in src/lib.rs: audit -> state -> session -> auth -> audit\n\
             \x20 audit -> state: src/audit.rs:1 crate::state::AppState\n\
             \x20 auth -> audit: src/auth/mod.rs:1 crate::audit::Audit (and 1 more)\n\
             \x20 session -> auth: src/session.rs:1 crate::auth::Principal\n\
             \x20 state -> session: src/state.rs:1 crate::session::Sessions\n\
             import cycle in src/lib.rs: files -> keys_cli -> files\n\
             \x20 files -> keys_cli: src/files/last_used.rs:1 crate::keys_cli::TableLock (and 1 more)\n\
             \x20 keys_cli -> files: src/keys_cli.rs:1 crate::files::atomic::write_atomic\n"
        );
    }
}
