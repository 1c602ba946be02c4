//! Import cycles between sibling modules, at every level of the tree.
//!
//! A reference from `a::x` to `b::y` is a dependency of `a` on `b`: both
//! are lifted to the children of their closest common ancestor. A module
//! naming its own ancestor or descendant (`use super::*` in a child, a
//! parent re-exporting its child) is how Rust nests code and is no
//! dependency between siblings, so it is left out. A cycle is then a set of
//! siblings each of which reaches the others (a strongly connected
//! component); `files <-> keys_cli` because `files::last_used` uses
//! `keys_cli` and `keys_cli` uses `files::atomic` is one.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::modules::{Crate, ModPath, Reference, Site};

/// One dependency between siblings: where it is first written (in file and
/// line order) and how many places write it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edge {
    pub from: ModPath,
    pub to: ModPath,
    pub first: Site,
    pub count: usize,
}

/// Siblings that import each other, directly or through others.
#[derive(Debug, PartialEq, Eq)]
pub struct Cycle {
    /// One shortest way round, starting and ending at the same module.
    pub shortest: Vec<ModPath>,
    /// Every module on a cycle with the others, sorted.
    pub members: Vec<ModPath>,
    /// Every dependency among the members.
    pub edges: Vec<Edge>,
}

/// Every cycle of `krate`, in the order of their first module.
pub fn find(krate: &Crate) -> Vec<Cycle> {
    let edges = sibling_edges(&krate.references);
    let mut graph: BTreeMap<&ModPath, BTreeSet<&ModPath>> = BTreeMap::new();
    for edge in edges.values() {
        graph.entry(&edge.from).or_default().insert(&edge.to);
        graph.entry(&edge.to).or_default();
    }
    components(&graph)
        .into_iter()
        .filter(|component| component.len() > 1)
        .map(|members| Cycle {
            shortest: shortest_cycle(&graph, &members),
            edges: edges
                .values()
                .filter(|e| members.contains(&&e.from) && members.contains(&&e.to))
                .cloned()
                .collect(),
            members: members.into_iter().cloned().collect(),
        })
        .collect()
}

/// The two siblings a reference from `from` to `to` makes depend on each
/// other; None when one contains the other.
fn lift(from: &ModPath, to: &ModPath) -> Option<(ModPath, ModPath)> {
    let common = from.iter().zip(to).take_while(|(a, b)| a == b).count();
    if common == from.len() || common == to.len() {
        return None;
    }
    Some((from[..=common].to_vec(), to[..=common].to_vec()))
}

fn sibling_edges(references: &[Reference]) -> BTreeMap<(ModPath, ModPath), Edge> {
    let mut sorted: Vec<&Reference> = references.iter().collect();
    sorted.sort_by(|a, b| a.site.cmp(&b.site));
    let mut edges = BTreeMap::new();
    for reference in sorted {
        let Some((from, to)) = lift(&reference.from, &reference.to) else {
            continue;
        };
        edges
            .entry((from.clone(), to.clone()))
            .and_modify(|e: &mut Edge| e.count += 1)
            .or_insert(Edge {
                from,
                to,
                first: reference.site.clone(),
                count: 1,
            });
    }
    edges
}

/// Tarjan's strongly connected components, each sorted, in the order of
/// their smallest module.
fn components<'a>(graph: &BTreeMap<&'a ModPath, BTreeSet<&'a ModPath>>) -> Vec<Vec<&'a ModPath>> {
    struct Walk<'g, 'a> {
        graph: &'g BTreeMap<&'a ModPath, BTreeSet<&'a ModPath>>,
        index: BTreeMap<&'a ModPath, usize>,
        low: BTreeMap<&'a ModPath, usize>,
        stack: Vec<&'a ModPath>,
        on_stack: BTreeSet<&'a ModPath>,
        found: Vec<Vec<&'a ModPath>>,
    }
    impl<'a> Walk<'_, 'a> {
        fn visit(&mut self, node: &'a ModPath) {
            let n = self.index.len();
            self.index.insert(node, n);
            self.low.insert(node, n);
            self.stack.push(node);
            self.on_stack.insert(node);
            for &next in &self.graph[node] {
                if !self.index.contains_key(next) {
                    self.visit(next);
                    let low = self.low[node].min(self.low[next]);
                    self.low.insert(node, low);
                } else if self.on_stack.contains(next) {
                    let low = self.low[node].min(self.index[next]);
                    self.low.insert(node, low);
                }
            }
            if self.low[node] == self.index[node] {
                let mut component = Vec::new();
                while let Some(member) = self.stack.pop() {
                    self.on_stack.remove(member);
                    component.push(member);
                    if member == node {
                        break;
                    }
                }
                component.sort();
                self.found.push(component);
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for &node in graph.keys() {
        if !walk.index.contains_key(node) {
            walk.visit(node);
        }
    }
    walk.found.sort();
    walk.found
}

/// The shortest way from a member back to itself inside `members`; of
/// equally short ones, the one from the smallest module.
fn shortest_cycle(
    graph: &BTreeMap<&ModPath, BTreeSet<&ModPath>>,
    members: &[&ModPath],
) -> Vec<ModPath> {
    let mut best: Option<Vec<ModPath>> = None;
    for &start in members {
        // Breadth first from `start`, until an edge leads back to it.
        let mut came_from: BTreeMap<&ModPath, &ModPath> = BTreeMap::new();
        let mut queue = VecDeque::from([start]);
        let mut last = None;
        'search: while let Some(node) = queue.pop_front() {
            for &next in &graph[node] {
                if next == start {
                    last = Some(node);
                    break 'search;
                }
                if members.contains(&next) && !came_from.contains_key(next) {
                    came_from.insert(next, node);
                    queue.push_back(next);
                }
            }
        }
        let Some(mut node) = last else { continue };
        let mut path = vec![start.clone(), node.clone()];
        while node != start {
            node = came_from[node];
            path.push(node.clone());
        }
        path.reverse();
        if best.as_ref().is_none_or(|b| path.len() < b.len()) {
            best = Some(path);
        }
    }
    best.unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::modules::fixture::{Fixture, KNOTTED};
    use crate::modules::scan;

    fn cycles(files: &[(&str, &str)]) -> Vec<Cycle> {
        find(&scan(&Fixture::new(files), Path::new("src/lib.rs")).unwrap())
    }

    fn names(paths: &[ModPath]) -> Vec<String> {
        paths.iter().map(|p| p.join("::")).collect()
    }

    #[test]
    fn finds_both_knots_with_where_they_are_written() {
        let found = cycles(KNOTTED);
        assert_eq!(found.len(), 2);
        assert_eq!(
            names(&found[0].shortest),
            ["audit", "state", "session", "auth", "audit"]
        );
        assert_eq!(names(&found[1].shortest), ["files", "keys_cli", "files"]);
        assert_eq!(names(&found[1].members), ["files", "keys_cli"]);
        let sites: Vec<String> = found[1]
            .edges
            .iter()
            .map(|e| {
                format!(
                    "{}:{} {}",
                    e.first.file.display(),
                    e.first.line,
                    e.first.text
                )
            })
            .collect();
        assert_eq!(
            sites,
            [
                "src/files/last_used.rs:1 crate::keys_cli::TableLock",
                "src/keys_cli.rs:1 crate::files::atomic::write_atomic",
            ]
        );
    }

    #[test]
    fn untied_knots_pass() {
        // As issue 18 unties them: Principal in a leaf module that session
        // and audit share, the table lock in files/.
        let untied: &[(&str, &str)] = &[
            (
                "src/lib.rs",
                "pub mod audit; pub mod auth; pub mod files; pub mod keys_cli; \
                 pub mod principal; pub mod session; pub mod state;",
            ),
            ("src/principal.rs", ""),
            (
                "src/audit.rs",
                "use crate::state::AppState; use crate::principal::P;",
            ),
            ("src/state.rs", "use crate::session::Sessions;"),
            ("src/session.rs", "use crate::principal::Principal;"),
            (
                "src/auth/mod.rs",
                "pub mod jwt; use crate::audit::Audit; use crate::principal::P;",
            ),
            ("src/auth/jwt.rs", "use super::Principal;"),
            ("src/files/mod.rs", "pub mod atomic; pub mod lock;"),
            ("src/files/atomic.rs", ""),
            ("src/files/lock.rs", "use super::atomic::write_atomic;"),
            ("src/keys_cli.rs", "use crate::files::lock::TableLock;"),
        ];
        assert_eq!(cycles(untied), []);
    }

    #[test]
    fn parents_and_children_may_name_each_other() {
        let nested: &[(&str, &str)] = &[
            ("src/lib.rs", "pub mod routes; use routes::app;"),
            (
                "src/routes/mod.rs",
                "pub mod openai; pub use openai::chat; fn app() {}",
            ),
            (
                "src/routes/openai.rs",
                "use super::*; use crate::routes::app;",
            ),
        ];
        assert_eq!(cycles(nested), []);
    }

    #[test]
    fn cycles_between_nested_siblings_are_found_at_their_level() {
        let nested: &[(&str, &str)] = &[
            ("src/lib.rs", "pub mod inference; pub mod engine;"),
            ("src/engine.rs", "use crate::inference::Engine;"),
            ("src/inference/mod.rs", "mod a; mod b;"),
            ("src/inference/a.rs", "use super::b::x;"),
            ("src/inference/b/mod.rs", "mod deep;"),
            (
                "src/inference/b/deep.rs",
                "fn f() { crate::inference::a::g() }",
            ),
        ];
        let found = cycles(nested);
        assert_eq!(found.len(), 1);
        assert_eq!(
            names(&found[0].shortest),
            ["inference::a", "inference::b", "inference::a"]
        );
    }

    #[test]
    fn test_modules_tie_no_knot() {
        let tests_only: &[(&str, &str)] = &[
            ("src/lib.rs", "pub mod a; pub mod b;"),
            ("src/a.rs", "use crate::b::B;"),
            ("src/b.rs", "#[cfg(test)]\nmod tests { use crate::a::A; }"),
        ];
        assert_eq!(cycles(tests_only), []);
    }
}
