//! The module tree of one crate and every path in it that names a module
//! of the same crate. The tree is found as rustc finds it: from the crate
//! root, following `mod name;` to `name.rs` or `name/mod.rs`, plus inline
//! `mod name { .. }`. Test code (any item under `#[cfg(test)]`) is left
//! out: a test module may import whatever it checks without that being a
//! dependency of the code under test.
//!
//! A path names a module when it starts at `crate::` (`$crate::`),
//! `super::` or `self::`, in a `use` tree or anywhere in code; it names the
//! deepest module its leading segments reach (`crate::auth::jwt::Claims`
//! names `auth::jwt`). Paths relative to the current module (`jwt::x`) can
//! only reach its own children, which the cycle check ignores anyway.

use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

use crate::lexer::{Tok, Token, tokens};

/// A module's path from the crate root; empty for the root itself.
pub type ModPath = Vec<String>;

/// Where a path was written.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Site {
    pub file: PathBuf,
    pub line: usize,
    /// The path as written, segments joined by `::`.
    pub text: String,
}

/// A module of the crate naming another one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    pub from: ModPath,
    pub to: ModPath,
    pub site: Site,
}

/// What scanning a crate found.
#[derive(Debug, Default)]
pub struct Crate {
    pub modules: BTreeSet<ModPath>,
    pub references: Vec<Reference>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{declared_in}:{line}: `mod {name};` but neither {name}.rs nor {name}/mod.rs is in {dir}"
    )]
    MissingModule {
        declared_in: PathBuf,
        line: usize,
        name: String,
        dir: PathBuf,
    },
}

/// Reads a source file, `None` when there is none at that path.
pub trait Sources {
    fn read(&self, path: &Path) -> Result<Option<String>, Error>;
}

/// The files on disk.
pub struct Disk;

impl Sources for Disk {
    fn read(&self, path: &Path) -> Result<Option<String>, Error> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }
}

/// Scans the crate whose root file is `root` (`src/lib.rs`, `src/main.rs`).
pub fn scan(sources: &impl Sources, root: &Path) -> Result<Crate, Error> {
    let mut krate = Crate::default();
    let mut raw = Vec::new();
    let Some(text) = sources.read(root)? else {
        return Err(Error::Read {
            path: root.to_path_buf(),
            source: std::io::ErrorKind::NotFound.into(),
        });
    };
    // Breadth first, so references come in the order of the tree.
    let mut pending = VecDeque::from([(root.to_path_buf(), ModPath::new(), text)]);
    while let Some((file, module, text)) = pending.pop_front() {
        let found = scan_file(&file, &module, &text);
        krate.modules.insert(module.clone());
        krate.modules.extend(found.inline);
        raw.extend(found.paths);
        for decl in found.declared {
            let dir = children_dir(&file, &decl.parent, &module);
            let (path, text) =
                child_file(sources, &dir, &decl.name)?.ok_or_else(|| Error::MissingModule {
                    declared_in: file.clone(),
                    line: decl.line,
                    name: decl.name.clone(),
                    dir: dir.clone(),
                })?;
            let mut child = decl.parent;
            child.push(decl.name);
            pending.push_back((path, child, text));
        }
    }
    krate.references = raw
        .into_iter()
        .map(|(from, path, site)| Reference {
            to: deepest_module(&krate.modules, &path),
            from,
            site,
        })
        .collect();
    Ok(krate)
}

/// The directory holding the files of the modules declared in `file`
/// inside its (possibly inline) module `parent`.
fn children_dir(file: &Path, parent: &ModPath, file_module: &ModPath) -> PathBuf {
    let owns_dir = matches!(
        file.file_name().and_then(|n| n.to_str()),
        Some("lib.rs" | "main.rs" | "mod.rs")
    );
    let mut dir = if owns_dir {
        file.parent().map(Path::to_path_buf).unwrap_or_default()
    } else {
        file.with_extension("")
    };
    for inline in &parent[file_module.len()..] {
        dir.push(inline);
    }
    dir
}

fn child_file(
    sources: &impl Sources,
    dir: &Path,
    name: &str,
) -> Result<Option<(PathBuf, String)>, Error> {
    for path in [
        dir.join(format!("{name}.rs")),
        dir.join(name).join("mod.rs"),
    ] {
        if let Some(text) = sources.read(&path)? {
            return Ok(Some((path, text)));
        }
    }
    Ok(None)
}

fn deepest_module(modules: &BTreeSet<ModPath>, path: &[String]) -> ModPath {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|prefix| modules.contains(prefix))
        .unwrap_or_default()
}

/// A `mod name;` declaration.
struct Declared {
    parent: ModPath,
    name: String,
    line: usize,
}

#[derive(Default)]
struct FileScan {
    declared: Vec<Declared>,
    inline: Vec<ModPath>,
    /// (from, absolute path, site)
    paths: Vec<(ModPath, Vec<String>, Site)>,
}

fn scan_file(file: &Path, module: &ModPath, text: &str) -> FileScan {
    let toks = tokens(text);
    let mut scan = FileScan::default();
    // Inline modules we are inside: (brace depth of their body, path).
    let mut inline: Vec<(usize, ModPath)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < toks.len() {
        let current = inline.last().map_or(module, |(_, m)| m).clone();
        match &toks[i].tok {
            Tok::Punct('#') if is_cfg_test(&toks, i) => {
                i = skip_item(&toks, skip_attribute(&toks, i));
            }
            Tok::Ident(kw) if kw == "mod" => match (ident(&toks, i + 1), punct(&toks, i + 2)) {
                (Some(name), Some(';')) => {
                    scan.declared.push(Declared {
                        parent: current,
                        name: name.to_string(),
                        line: toks[i].line,
                    });
                    i += 3;
                }
                (Some(name), Some('{')) => {
                    let mut path = current;
                    path.push(name.to_string());
                    depth += 1;
                    inline.push((depth, path.clone()));
                    scan.inline.push(path);
                    i += 3;
                }
                _ => i += 1,
            },
            Tok::Ident(kw) if kw == "use" => {
                let line = toks[i].line;
                let mut trees = Vec::new();
                i = use_tree(&toks, i + 1, Vec::new(), &mut trees);
                for path in trees {
                    scan.push(file, &current, path, line);
                }
            }
            // `pub(in crate::x)` is a visibility, not a use of `x`.
            Tok::Ident(kw) if kw == "pub" && punct(&toks, i + 1) == Some('(') => {
                i = toks[i..]
                    .iter()
                    .position(|t| t.tok == Tok::Punct(')'))
                    .map_or(toks.len(), |p| i + p + 1);
            }
            Tok::Ident(first)
                if matches!(first.as_str(), "crate" | "super" | "self")
                    && toks.get(i + 1).map(|t| &t.tok) == Some(&Tok::PathSep)
                    && (i == 0 || toks[i - 1].tok != Tok::PathSep) =>
            {
                let line = toks[i].line;
                let mut path = vec![first.clone()];
                i += 1;
                while toks.get(i).map(|t| &t.tok) == Some(&Tok::PathSep) {
                    let Some(segment) = ident(&toks, i + 1) else {
                        break;
                    };
                    path.push(segment.to_string());
                    i += 2;
                }
                scan.push(file, &current, path, line);
            }
            Tok::Punct('{') => {
                depth += 1;
                i += 1;
            }
            Tok::Punct('}') => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|(d, _)| *d > depth) {
                    inline.pop();
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    scan
}

impl FileScan {
    fn push(&mut self, file: &Path, from: &ModPath, written: Vec<String>, line: usize) {
        if let Some(absolute) = absolute(from, &written) {
            self.paths.push((
                from.clone(),
                absolute,
                Site {
                    file: file.to_path_buf(),
                    line,
                    text: written.join("::"),
                },
            ));
        }
    }
}

/// `written` from the crate root, or None when it is relative to the
/// current module or names another crate.
fn absolute(from: &ModPath, written: &[String]) -> Option<Vec<String>> {
    let (base, rest) = match written.first()?.as_str() {
        "crate" => (Vec::new(), &written[1..]),
        "self" => (from.clone(), &written[1..]),
        "super" => {
            let ups = written.iter().take_while(|s| *s == "super").count();
            (
                from[..from.len().checked_sub(ups)?].to_vec(),
                &written[ups..],
            )
        }
        _ => return None,
    };
    // `use crate::auth::{self, X}` arrives as `crate::auth::self`.
    Some(
        base.into_iter()
            .chain(rest.iter().filter(|s| *s != "self").cloned())
            .collect(),
    )
}

fn ident(toks: &[Token], i: usize) -> Option<&str> {
    match toks.get(i).map(|t| &t.tok) {
        Some(Tok::Ident(s)) => Some(s),
        _ => None,
    }
}

fn punct(toks: &[Token], i: usize) -> Option<char> {
    match toks.get(i).map(|t| &t.tok) {
        Some(Tok::Punct(c)) => Some(*c),
        _ => None,
    }
}

/// Reads one use tree from `i`, pushing each full path it imports (a glob
/// imports its prefix); returns the index after it.
fn use_tree(
    toks: &[Token],
    mut i: usize,
    mut prefix: Vec<String>,
    out: &mut Vec<Vec<String>>,
) -> usize {
    // `use ::name` is another crate.
    if toks.get(i).map(|t| &t.tok) == Some(&Tok::PathSep) && prefix.is_empty() {
        prefix.push("::".into());
        i += 1;
    }
    loop {
        match toks.get(i).map(|t| &t.tok) {
            Some(Tok::Ident(segment)) => {
                prefix.push(segment.clone());
                i += 1;
                if toks.get(i).map(|t| &t.tok) == Some(&Tok::PathSep) {
                    i += 1;
                    continue;
                }
                if ident(toks, i) == Some("as") {
                    i += 2;
                }
                out.push(prefix);
                return i;
            }
            Some(Tok::Punct('*')) => {
                out.push(prefix);
                return i + 1;
            }
            Some(Tok::Punct('{')) => {
                i += 1;
                while let Some(tok) = toks.get(i).map(|t| &t.tok) {
                    match tok {
                        Tok::Punct('}') => return i + 1,
                        Tok::Punct(',') => i += 1,
                        _ => i = use_tree(toks, i, prefix.clone(), out),
                    }
                }
                return i;
            }
            _ => return i,
        }
    }
}

/// Whether an outer attribute `#[cfg(test)]` starts at `i`.
fn is_cfg_test(toks: &[Token], i: usize) -> bool {
    let want = [
        Tok::Punct('#'),
        Tok::Punct('['),
        Tok::Ident("cfg".into()),
        Tok::Punct('('),
        Tok::Ident("test".into()),
        Tok::Punct(')'),
        Tok::Punct(']'),
    ];
    toks.len() >= i + want.len() && toks[i..i + want.len()].iter().map(|t| &t.tok).eq(&want)
}

/// The index after the attribute `#[...]` at `i`.
fn skip_attribute(toks: &[Token], i: usize) -> usize {
    let mut depth = 0usize;
    for (k, t) in toks.iter().enumerate().skip(i + 1) {
        match t.tok {
            Tok::Punct('[') => depth += 1,
            Tok::Punct(']') => {
                depth -= 1;
                if depth == 0 {
                    return k + 1;
                }
            }
            _ => {}
        }
    }
    toks.len()
}

/// The index after the item at `i` (its further attributes included): up
/// to its `;`, or to the brace closing its body.
fn skip_item(toks: &[Token], mut i: usize) -> usize {
    while punct(toks, i) == Some('#') {
        i = skip_attribute(toks, i);
    }
    let is_use = ident(toks, i) == Some("use");
    let mut nesting = 0usize;
    while let Some(t) = toks.get(i) {
        i += 1;
        match t.tok {
            Tok::Punct(';') if nesting == 0 => return i,
            Tok::Punct('{') if nesting == 0 && !is_use => return skip_block(toks, i),
            Tok::Punct('(' | '[' | '{') => nesting += 1,
            Tok::Punct(')' | ']' | '}') => nesting = nesting.saturating_sub(1),
            _ => {}
        }
    }
    i
}

/// The index after the `}` that closes a block whose `{` is just before `i`.
fn skip_block(toks: &[Token], mut i: usize) -> usize {
    let mut depth = 1usize;
    while let Some(t) = toks.get(i) {
        i += 1;
        match t.tok {
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
    }
    i
}

#[cfg(test)]
pub mod fixture {
    //! A crate held in memory, for the tests of the scan and the check.
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    use super::{Error, Sources};

    pub struct Fixture(pub BTreeMap<PathBuf, String>);

    impl Fixture {
        pub fn new(files: &[(&str, &str)]) -> Self {
            Self(
                files
                    .iter()
                    .map(|(path, text)| (PathBuf::from(path), text.to_string()))
                    .collect(),
            )
        }
    }

    /// The server's two knots as they are today (issue 18): every file
    /// holds just the imports that tie them.
    pub const KNOTTED: &[(&str, &str)] = &[
        (
            "src/lib.rs",
            "pub mod audit; pub mod auth; pub mod files; pub mod keys_cli; \
             pub mod session; pub mod state; pub use auth::Principal;",
        ),
        ("src/audit.rs", "use crate::state::AppState;"),
        ("src/state.rs", "use crate::session::Sessions;"),
        ("src/session.rs", "use crate::auth::Principal;"),
        (
            "src/auth/mod.rs",
            "pub mod jwt; use crate::audit::{Audit, RateInfo}; use self::jwt::Claims;",
        ),
        ("src/auth/jwt.rs", "use super::Principal;"),
        ("src/files/mod.rs", "pub mod atomic; pub mod last_used;"),
        ("src/files/atomic.rs", ""),
        (
            "src/files/last_used.rs",
            "use crate::keys_cli::{self, TableLock};",
        ),
        ("src/keys_cli.rs", "use crate::files::atomic::write_atomic;"),
    ];

    impl Sources for Fixture {
        fn read(&self, path: &Path) -> Result<Option<String>, Error> {
            Ok(self.0.get(path).cloned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::Fixture;
    use super::*;

    fn names(path: &ModPath) -> String {
        path.join("::")
    }

    /// `from -> to` for every reference, in order.
    fn arrows(krate: &Crate) -> Vec<String> {
        krate
            .references
            .iter()
            .map(|r| format!("{} -> {}", names(&r.from), names(&r.to)))
            .collect()
    }

    #[test]
    fn finds_files_and_inline_modules() {
        let fixture = Fixture::new(&[
            ("src/lib.rs", "pub mod a; mod b;\n#[cfg(test)]\nmod tests;"),
            ("src/a.rs", "mod nested; mod inline { mod deeper; }"),
            ("src/a/nested.rs", ""),
            ("src/a/inline/deeper.rs", ""),
            ("src/b/mod.rs", "pub mod c;"),
            ("src/b/c.rs", ""),
        ]);
        let krate = scan(&fixture, Path::new("src/lib.rs")).unwrap();
        let all: Vec<String> = krate.modules.iter().map(names).collect();
        assert_eq!(
            all,
            [
                "",
                "a",
                "a::inline",
                "a::inline::deeper",
                "a::nested",
                "b",
                "b::c"
            ]
        );
    }

    #[test]
    fn a_missing_module_file_is_an_error() {
        let fixture = Fixture::new(&[("src/lib.rs", "\nmod gone;")]);
        let err = scan(&fixture, Path::new("src/lib.rs")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "src/lib.rs:2: `mod gone;` but neither gone.rs nor gone/mod.rs is in src"
        );
    }

    #[test]
    fn use_trees_super_self_and_inline_paths_resolve_to_modules() {
        let fixture = Fixture::new(&[
            ("src/lib.rs", "mod a; mod b; mod c;"),
            (
                "src/a.rs",
                "use crate::{b::{self, Thing as T}, c::*};\n\
                 fn f() { super::c::g(); crate::b::h::<u8>(); }\n\
                 pub(in crate::c) fn v() {}",
            ),
            (
                "src/b.rs",
                "mod inner { use super::super::a::x; use self::y; mod y {} }",
            ),
            ("src/c.rs", "use std::fmt; use ::other::x;"),
        ]);
        let krate = scan(&fixture, Path::new("src/lib.rs")).unwrap();
        assert_eq!(
            arrows(&krate),
            [
                "a -> b",
                "a -> b",
                "a -> c",
                "a -> c",
                "a -> b",
                "b::inner -> a",
                "b::inner -> b::inner::y",
            ]
        );
        let site = &krate.references[3].site;
        assert_eq!((site.line, site.text.as_str()), (2, "super::c::g"));
    }

    #[test]
    fn test_code_imports_nothing() {
        let fixture = Fixture::new(&[
            ("src/lib.rs", "mod a; mod b;"),
            (
                "src/a.rs",
                "#[cfg(test)]\nuse crate::b::{x, y};\n\
                 #[cfg(test)]\n#[allow(unused)]\nfn t() { crate::b::z(); }\n\
                 #[cfg(test)]\nmod tests { use crate::b::w; }\n\
                 fn kept() { crate::b::k(); }",
            ),
            ("src/b.rs", ""),
        ]);
        let krate = scan(&fixture, Path::new("src/lib.rs")).unwrap();
        assert_eq!(arrows(&krate), ["a -> b"]);
        assert_eq!(krate.references[0].site.text, "crate::b::k");
    }
}
