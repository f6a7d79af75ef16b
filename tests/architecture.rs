//! The agent's shape, checked from its source: no file of `src/agent/` is
//! large, and its files call each other in one direction only (a file that
//! calls a method of `Agent` defined in another file is never called back
//! by it, directly or through others). See docs/architecture.md.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The largest a file of the agent may grow.
const MAX_LINES: usize = 800;

fn agent_files() -> BTreeMap<String, String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/agent");
    let mut files = BTreeMap::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "rs") {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            files.insert(name, std::fs::read_to_string(&p).unwrap());
        }
    }
    assert!(
        files.len() > 5,
        "no agent sources found in {}",
        dir.display()
    );
    files
}

/// The text of every `impl Agent { ... }` block of a file (a block ends at
/// the first line that is a lone `}` at column 0, as rustfmt writes it).
fn agent_impls(src: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in src.lines() {
        if line.starts_with("impl Agent {") {
            inside = true;
        } else if inside && line == "}" {
            inside = false;
        } else if inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Names of the methods defined in `impl Agent` blocks.
fn methods(src: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in agent_impls(src).lines() {
        let t = line.trim_start();
        let t = t
            .strip_prefix("pub(super) ")
            .or_else(|| t.strip_prefix("pub "))
            .unwrap_or(t);
        if let Some(rest) = t.strip_prefix("fn ") {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            names.insert(name);
        }
    }
    names
}

/// Names `x` of every `self.x(` call in a file.
fn self_calls(src: &str) -> BTreeSet<String> {
    let mut calls = BTreeSet::new();
    let mut rest = src;
    while let Some(i) = rest.find("self.") {
        rest = &rest[i + 5..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if rest[name.len()..].starts_with('(') {
            calls.insert(name);
        }
    }
    calls
}

#[test]
fn no_agent_file_is_larger_than_800_lines() {
    let big: Vec<String> = agent_files()
        .iter()
        .map(|(n, s)| (n, s.lines().count()))
        .filter(|&(_, l)| l > MAX_LINES)
        .map(|(n, l)| format!("src/agent/{n}.rs: {l} lines"))
        .collect();
    assert!(big.is_empty(), "over {MAX_LINES} lines: {big:?}");
}

#[test]
fn agent_files_call_each_other_in_one_direction() {
    let files = agent_files();
    // Which file defines each method of Agent (each name in one file only).
    let mut home: BTreeMap<String, String> = BTreeMap::new();
    for (file, src) in &files {
        for m in methods(src) {
            if let Some(other) = home.insert(m.clone(), file.clone()) {
                panic!("Agent::{m} is defined in both {other}.rs and {file}.rs");
            }
        }
    }
    assert!(
        home.len() > 40,
        "found only {} methods of Agent",
        home.len()
    );
    let mut edges: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (file, src) in &files {
        for c in self_calls(&agent_impls(src)) {
            if let Some(to) = home.get(&c) {
                if to != file {
                    edges.entry(file).or_default().insert(to);
                }
            }
        }
    }
    // Depth-first search for a cycle.
    fn visit<'a>(
        n: &'a str,
        edges: &BTreeMap<&'a str, BTreeSet<&'a str>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) {
        if let Some(i) = path.iter().position(|&p| p == n) {
            panic!(
                "agent files call each other in a cycle: {}",
                path[i..]
                    .iter()
                    .chain([&n])
                    .map(|f| format!("{f}.rs"))
                    .collect::<Vec<_>>()
                    .join(" -> ")
            );
        }
        if done.contains(n) {
            return;
        }
        path.push(n);
        for &m in edges.get(n).into_iter().flatten() {
            visit(m, edges, path, done);
        }
        path.pop();
        done.insert(n);
    }
    let mut done = BTreeSet::new();
    for &f in edges.keys() {
        visit(f, &edges, &mut Vec::new(), &mut done);
    }
    // The layering docs/architecture.md draws: the run loop on top, the
    // rooms (no `impl Agent`) at the bottom.
    for room in ["clients", "peers", "inbox", "conns"] {
        assert!(
            methods(&files[room]).is_empty(),
            "{room}.rs is a room: it must not extend Agent"
        );
    }
    assert!(
        !edges.get("deliver").is_some_and(|e| e.contains("links")),
        "deliver.rs must not call links.rs"
    );
}

/// The methods of the `Transport` trait: what a back end must provide, at
/// most 12 (issue 15's bound). On-demand links (issue 17) added `want`;
/// `queued` and `last_tx` became one `link` (what the agent may know of a
/// link) to stay within it. This bound only goes down from here.
const MAX_TRANSPORT_METHODS: usize = 12;

#[test]
fn the_transport_trait_stays_small() {
    let src =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/transport/mod.rs"))
            .unwrap();
    let body: Vec<&str> = src
        .lines()
        .skip_while(|l| !l.starts_with("pub trait Transport {"))
        .take_while(|l| *l != "}")
        .collect();
    assert!(
        !body.is_empty(),
        "no Transport trait in src/transport/mod.rs"
    );
    let methods: Vec<&str> = body
        .iter()
        .filter_map(|l| l.strip_prefix("    fn "))
        .collect();
    assert!(
        methods.len() <= MAX_TRANSPORT_METHODS,
        "the Transport trait has {} methods (at most {MAX_TRANSPORT_METHODS}): {methods:?}",
        methods.len()
    );
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    // The parser sees definitions and calls as the real check does.
    let a = "impl Agent {\n    pub(super) fn a(&mut self) {\n        self.b();\n    }\n}\n";
    let b = "impl Agent {\n    fn b(&mut self) {\n        self.a();\n    }\n}\n";
    assert_eq!(methods(a), BTreeSet::from(["a".to_string()]));
    assert_eq!(self_calls(b), BTreeSet::from(["a".to_string()]));
    assert!(self_calls("self.field.x()").is_empty());
}
