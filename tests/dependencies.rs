//! The dependency direction ARCHITECTURE.md states ("`journal` does not depend on anything
//! else in the crate", ...), kept true by reading the `crate::` paths of `src/`: the modules
//! form no cycle, and `journal` depends on nothing else in the crate.
//!
//! A module is a file `src/x.rs` or the files under `src/x/`; it depends on every module of
//! the crate that a `crate::` path in its code names (in `use` lines or inline, grouped
//! `crate::{a, b::c}` included). Comments, string and character literals, and items marked
//! `#[cfg(test)]` are not code it depends on: tests may reach across the layers. (A
//! `super::super::x` path out of a nested module is not read: the crate uses `crate::`.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Edges that close a cycle today and are allowed until they are cut, with why each exists.
/// An edge listed here that no longer exists fails the test, so the list only shrinks.
const KNOWN_BACK_EDGES: &[(&str, &str, &str)] = &[];

#[test]
fn the_modules_of_the_crate_form_no_cycle() {
    let mut graph = module_graph();
    for (from, to, why) in KNOWN_BACK_EDGES {
        let present = graph.get_mut(*from).is_some_and(|deps| deps.remove(*to));
        assert!(
            present,
            "{from} -> {to} is gone: remove it from KNOWN_BACK_EDGES ({why})"
        );
    }
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "the modules of src/ depend on each other in a cycle: {} (see ARCHITECTURE.md, \
             Dependency direction)",
            cycle.join(" -> ")
        );
    }
}

#[test]
fn journal_depends_on_nothing_else_in_the_crate() {
    let graph = module_graph();
    let deps = &graph["journal"];
    assert!(
        deps.is_empty(),
        "journal depends on {deps:?}: it must not depend on anything else in the crate \
         (conversions to other modules' types belong with their users, e.g. store)"
    );
}

#[test]
fn the_graph_is_read_from_the_sources() {
    // A reader that found nothing would pass every check above.
    let graph = module_graph();
    for (from, to) in [
        ("store", "journal"),
        ("service", "store"),
        ("api", "service"),
    ] {
        assert!(
            graph[from].contains(to),
            "{from} -> {to} not found in {graph:#?}"
        );
    }
}

#[test]
fn a_cycle_is_found_and_named() {
    let graph = graph_of(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"]), ("d", &["a"])]);
    let cycle = find_cycle(&graph).expect("a -> b -> c -> a");
    assert_eq!(cycle.first(), cycle.last());
    assert_eq!(cycle.len(), 4, "{cycle:?}");
    let acyclic = graph_of(&[("a", &["b", "c"]), ("b", &["c"]), ("c", &[]), ("d", &["a"])]);
    assert_eq!(find_cycle(&acyclic), None);
}

#[test]
fn paths_are_read_from_code_only() {
    let modules: BTreeSet<String> = ["a", "b", "c", "d", "e", "f", "g"].map(String::from).into();
    let code = r##"
        //! Uses [`x`](crate::g).
        use crate::a::Thing;
        use crate::{b, c::{self, Other}};
        /* crate::g */
        fn f() -> &'static str { let _c = '"'; crate::d::call(); "crate::g" }
        fn r() -> &'static str { r#"crate::g "# }
        #[cfg(test)]
        mod tests { use crate::g; }
        #[cfg(test)]
        use crate::g::Hook;
        fn h<'a>(x: &'a str) { crate::e::call(x) }
        struct S {
            #[cfg(test)]
            hook: crate::g::Hook,
            kept: crate::f::Kept,
        }
    "##;
    let found = crate_paths(&strip(code), &modules);
    let expected: BTreeSet<String> = ["a", "b", "c", "d", "e", "f"].map(String::from).into();
    assert_eq!(found, expected);
}

/// The module graph of `src/` (the library: `lib.rs` only declares the modules, `main.rs` is
/// the binary's own crate).
fn module_graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let module_of = |file: &Path| -> String {
        let first = file
            .strip_prefix(&src)
            .unwrap()
            .components()
            .next()
            .unwrap();
        let name = first.as_os_str().to_string_lossy();
        name.trim_end_matches(".rs").to_string()
    };
    let modules: BTreeSet<String> = files
        .iter()
        .map(|f| module_of(f))
        .filter(|m| m != "lib" && m != "main")
        .collect();
    let mut graph: Graph = modules
        .iter()
        .map(|m| (m.clone(), BTreeSet::new()))
        .collect();
    for file in &files {
        let module = module_of(file);
        let Some(deps) = graph.get_mut(&module) else {
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        deps.extend(crate_paths(&strip(&text), &modules));
        deps.remove(&module);
    }
    graph
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The modules (of `modules`) that the `crate::` paths of `code` name.
fn crate_paths(code: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let b = code.as_bytes();
    let mut found = BTreeSet::new();
    let mut from = 0;
    while let Some(i) = code[from..].find("crate::").map(|i| i + from) {
        from = i + "crate::".len();
        if i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_') {
            continue;
        }
        let rest = code[from..].trim_start();
        let names: Vec<&str> = match rest.strip_prefix('{') {
            // `crate::{a, b::{c, d}}`: the first name of each item at the group's top level.
            Some(group) => {
                let mut depth = 0;
                let end = group
                    .find(|c| {
                        match c {
                            '{' => depth += 1,
                            '}' if depth == 0 => return true,
                            '}' => depth -= 1,
                            _ => {}
                        }
                        false
                    })
                    .unwrap_or(group.len());
                let mut items = Vec::new();
                let mut depth = 0;
                let mut start = 0;
                for (j, c) in group[..end].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            items.push(&group[start..j]);
                            start = j + 1;
                        }
                        _ => {}
                    }
                }
                items.push(&group[start..end]);
                items.into_iter().map(first_name).collect()
            }
            None => vec![first_name(rest)],
        };
        found.extend(
            names
                .into_iter()
                .filter(|n| modules.contains(*n))
                .map(String::from),
        );
    }
    found
}

fn first_name(path: &str) -> &str {
    let path = path.trim_start();
    let end = path
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(path.len());
    &path[..end]
}

/// `code` with its comments, the contents of its string and character literals and its
/// `#[cfg(test)]` items blanked out.
fn strip(code: &str) -> String {
    let c: Vec<char> = code.chars().collect();
    let mut out = String::with_capacity(code.len());
    let mut i = 0;
    let ident = |k: usize| c[k].is_alphanumeric() || c[k] == '_';
    while i < c.len() {
        let at = |s: &str| c[i..].iter().take(s.len()).copied().eq(s.chars());
        if at("//") {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if at("/*") {
            let mut depth = 0;
            while i < c.len() {
                if c[i..].starts_with(&['/', '*']) {
                    depth += 1;
                    i += 2;
                } else if c[i..].starts_with(&['*', '/']) {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c[i] == 'r' && (i == 0 || !ident(i - 1)) && raw_hashes(&c[i + 1..]).is_some() {
            // r"..." or r#"..."#: ends at a quote followed by as many hashes.
            let hashes = raw_hashes(&c[i + 1..]).unwrap();
            i += 2 + hashes;
            while i < c.len()
                && !(c[i] == '"' && c[i + 1..].iter().take_while(|&&h| h == '#').count() >= hashes)
            {
                i += 1;
            }
            i += 1 + hashes;
            out.push_str("\"\"");
        } else if c[i] == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c[i] == '\'' && c.get(i + 1) == Some(&'\\') {
            i += 2;
            while i < c.len() && c[i] != '\'' {
                i += 1;
            }
            i += 1;
            out.push_str("' '");
        } else if c[i] == '\'' && c.get(i + 2) == Some(&'\'') {
            i += 3;
            out.push_str("' '");
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    without_test_items(&out)
}

/// The number of `#` of a raw string that starts here (after its `r`), if one does.
fn raw_hashes(c: &[char]) -> Option<usize> {
    let hashes = c.iter().take_while(|&&h| h == '#').count();
    (c.get(hashes) == Some(&'"')).then_some(hashes)
}

/// `code` without the items marked `#[cfg(test)]`: from the attribute to the end of the item
/// (its `;` or `,`, its closing brace, or the end of the enclosing block).
fn without_test_items(code: &str) -> String {
    const MARK: &str = "#[cfg(test)]";
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(start) = rest.find(MARK) {
        out.push_str(&rest[..start]);
        let item = &rest[start + MARK.len()..];
        let mut depth = 0i32;
        let mut end = item.len();
        for (j, ch) in item.char_indices() {
            match ch {
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' if depth == 0 => {
                    end = j;
                    break;
                }
                ')' | ']' => depth -= 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = j + 1;
                        break;
                    }
                }
                ';' | ',' if depth == 0 => {
                    end = j + 1;
                    break;
                }
                _ => {}
            }
        }
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

/// A cycle of `graph` as the modules along it (the first repeated last), if there is one.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    // Depth-first, keeping the path: an edge back into the path closes a cycle.
    fn visit<'g>(
        graph: &'g Graph,
        node: &'g str,
        path: &mut Vec<&'g str>,
        done: &mut BTreeSet<&'g str>,
    ) -> Option<Vec<String>> {
        if let Some(k) = path.iter().position(|&p| p == node) {
            let mut cycle: Vec<String> = path[k..].iter().map(|s| s.to_string()).collect();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if !done.insert(node) {
            return None;
        }
        path.push(node);
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(graph, next, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(graph, node, &mut Vec::new(), &mut done))
}

fn graph_of(edges: &[(&str, &[&str])]) -> Graph {
    edges
        .iter()
        .map(|(from, to)| (from.to_string(), to.iter().map(|t| t.to_string()).collect()))
        .collect()
}
