//! The documentation's configuration snippets load: every ```toml block of README.md and
//! docs/**/*.md is written to a file and given to `wyvern agent -c FILE --print-config`
//! (the same loading and checks an agent does at start, without starting one); then the
//! printed configuration is loaded again the same way (it must round-trip). A failure
//! names the file and line of the snippet and the agent's error.
//!
//! Host names in `nodes` are the reader's cluster (`node02:7470`): they are replaced by
//! 127.0.0.1 with the same port before loading, so only name resolution is not checked.
//! A snippet for a transport whose cargo feature this build lacks is skipped, loudly.
//!
//! And every `wyvern ...` command of a ```sh/```console/```bash block parses (run with
//! `--help` appended: clap refuses unknown subcommands, unknown flags and bad values first).
//!
//! And every relative link of README.md, docs/**/*.md and bench/*.md (`[text](path)`,
//! `![alt](path)`, `path#anchor`, `#anchor`) names a file or directory that exists, and its
//! `#anchor`, if any, a heading (GitHub's slug) or an `<a id>` of that markdown file.
//!
//! And the README's quick start runs: two agents, a responder, `wyvern ping` and `wyvern bw`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A fenced block of a markdown file: its language, first line (1-based) and text.
struct Block {
    lang: String,
    line: usize,
    text: String,
}

/// The fenced code blocks (```lang ... ```) of a markdown text.
fn blocks(md: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut cur: Option<Block> = None;
    for (i, l) in md.lines().enumerate() {
        let t = l.trim_start();
        match &mut cur {
            None => {
                if let Some(lang) = t.strip_prefix("```") {
                    cur = Some(Block {
                        lang: lang.trim().to_string(),
                        line: i + 2,
                        text: String::new(),
                    });
                }
            }
            Some(b) => {
                if t.starts_with("```") {
                    out.push(cur.take().unwrap());
                } else {
                    b.text.push_str(l);
                    b.text.push('\n');
                }
            }
        }
    }
    out
}

/// README.md and every .md under docs/.
fn doc_files() -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    let mut dirs = vec![root.join("docs")];
    while let Some(d) = dirs.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "md") {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

/// `nodes` entries naming a host other than an IP address get 127.0.0.1 instead.
fn unname_nodes(text: &str) -> String {
    let Ok(mut t) = text.parse::<toml::Table>() else {
        return text.to_string(); // the agent's loader says what is wrong
    };
    let Some(toml::Value::Array(nodes)) = t.get_mut("nodes") else {
        return text.to_string();
    };
    let mut changed = false;
    for n in nodes.iter_mut() {
        if let toml::Value::String(s) = n {
            if let Some((host, port)) = s.rsplit_once(':') {
                let host = host.trim_start_matches('[').trim_end_matches(']');
                if host.parse::<std::net::IpAddr>().is_err() {
                    *s = format!("127.0.0.1:{port}");
                    changed = true;
                }
            }
        }
    }
    if changed {
        toml::to_string(&t).expect("serialisable")
    } else {
        text.to_string()
    }
}

/// `wyvern agent -c FILE --print-config`: the printed configuration, or the error.
fn print_config(file: &Path) -> Result<String, String> {
    let o = Command::new(env!("CARGO_BIN_EXE_wyvern"))
        .args(["agent", "-c"])
        .arg(file)
        .arg("--print-config")
        .env_remove("WYVERN_SOCKET")
        .output()
        .expect("run wyvern agent --print-config");
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ))
    }
}

/// Skipped for a feature this build lacks: the error says which cargo feature it needs.
fn lacks_feature(err: &str) -> Option<&'static str> {
    [
        ("dpdk", cfg!(feature = "dpdk")),
        ("verbs", cfg!(feature = "verbs")),
    ]
    .into_iter()
    .find(|(f, built)| !built && err.contains(&format!("the `{f}` cargo feature")))
    .map(|(f, _)| f)
}

#[test]
fn every_toml_snippet_in_the_docs_loads() {
    let dir = tempfile::tempdir().unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    let mut failures = Vec::new();
    for f in doc_files() {
        let md = std::fs::read_to_string(&f).unwrap();
        let rel = f.strip_prefix(&root).unwrap_or(&f).display().to_string();
        for b in blocks(&md).into_iter().filter(|b| b.lang == "toml") {
            let at = format!("{rel}:{}", b.line);
            let file = dir.path().join(format!("snippet{checked}.toml"));
            std::fs::write(&file, unname_nodes(&b.text)).unwrap();
            checked += 1;
            let printed = match print_config(&file) {
                Ok(p) => p,
                Err(e) => {
                    if let Some(feat) = lacks_feature(&e) {
                        eprintln!("*** SKIPPED the snippet at {at}: needs the {feat} feature ***");
                    } else {
                        failures.push(format!("{at}: the snippet does not load: {e}"));
                    }
                    continue;
                }
            };
            // What --print-config prints is a configuration file too.
            let again = dir.path().join(format!("printed{checked}.toml"));
            std::fs::write(&again, &printed).unwrap();
            match print_config(&again) {
                Ok(p) if p == printed => {}
                Ok(p) => failures.push(format!(
                    "{at}: --print-config does not round-trip:\n{printed}\n---\n{p}"
                )),
                Err(e) => failures.push(format!(
                    "{at}: the configuration --print-config printed does not load: {e}"
                )),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} snippets fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(checked >= 1, "no ```toml block found in README.md or docs/");
    eprintln!("{checked} toml snippets load");
}

/// The checker itself: a bad snippet is reported with its file and line.
#[test]
fn a_bad_snippet_is_reported_with_its_line() {
    let md = "text\n\n```toml\nnode_id = 0\n[pool]\nblock_byte = 1\n```\n";
    let b = blocks(md);
    assert_eq!(b.len(), 1);
    assert_eq!((b[0].lang.as_str(), b[0].line), ("toml", 4));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, &b[0].text).unwrap();
    let e = print_config(&file).unwrap_err();
    assert!(e.contains("unknown field `block_byte`"), "{e}");
    // Names in `nodes` are replaced, addresses kept.
    let t = unname_nodes("nodes = [\"node02:7470\", \"10.0.0.1:7470\", \"[::1]:9\"]\n");
    assert!(
        t.contains("\"127.0.0.1:7470\"")
            && t.contains("\"10.0.0.1:7470\"")
            && t.contains("\"[::1]:9\""),
        "{t}"
    );
}

/// The `wyvern ...` command lines of a shell block: backslash continuations joined, each
/// from the word `wyvern` to the end of its command (`#` comment, `)`, `;`, `&`, `|`).
fn wyvern_commands(block: &str) -> Vec<String> {
    let joined = block.replace("\\\n", " ");
    let mut out = Vec::new();
    for line in joined.lines() {
        let line = line.trim_start().trim_start_matches("$ ");
        if line.starts_with('#') {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("wyvern ") {
            let before = rest[..i].chars().last();
            let after = &rest[i..];
            if before.is_none_or(|c| c == ' ' || c == '(' || c == '\'' || c == '"') {
                let end = after
                    .char_indices()
                    .find(|&(j, c)| {
                        matches!(c, ')' | ';' | '&' | '|' | '<' | '>')
                            || (c == '#' && after[..j].ends_with(' '))
                    })
                    .map_or(after.len(), |(j, _)| j);
                out.push(after[..end].trim().to_string());
                rest = &after[end..];
            } else {
                rest = &after["wyvern ".len()..];
            }
        }
    }
    out
}

/// Shell words: blanks separate, quotes group, a backslash escapes.
fn shell_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur: Option<String> = None;
    let mut chars = s.chars();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.get_or_insert_with(String::new).push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                cur.get_or_insert_with(String::new);
            }
            (None, '\\') => {
                if let Some(n) = chars.next() {
                    cur.get_or_insert_with(String::new).push(n);
                }
            }
            (None, c) if c.is_whitespace() => words.extend(cur.take()),
            (None, c) => cur.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(cur);
    words
}

/// Every `wyvern ...` command of a ```sh/```console/```bash block parses: run with
/// `--help` appended, clap refuses an unknown flag, a subcommand that does not exist or a
/// bad value before it (nothing runs). Placeholders in values are not checked.
#[test]
fn every_wyvern_command_in_the_docs_parses() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    let mut failures = Vec::new();
    for f in doc_files() {
        let md = std::fs::read_to_string(&f).unwrap();
        let rel = f.strip_prefix(&root).unwrap_or(&f).display().to_string();
        for b in blocks(&md)
            .into_iter()
            .filter(|b| matches!(b.lang.as_str(), "sh" | "console" | "bash" | "shell"))
        {
            for cmd in wyvern_commands(&b.text) {
                let words = shell_words(&cmd);
                checked += 1;
                let o = Command::new(env!("CARGO_BIN_EXE_wyvern"))
                    .args(&words[1..])
                    .arg("--help")
                    .output()
                    .expect("run wyvern");
                if !o.status.success() {
                    failures.push(format!(
                        "{rel}:{} (block): `{cmd}`: {}",
                        b.line,
                        String::from_utf8_lossy(&o.stderr).trim()
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} commands do not parse:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        checked >= 1,
        "no wyvern command found in the docs' shell blocks"
    );
    eprintln!("{checked} wyvern commands parse");
}

#[test]
fn commands_are_found_and_split_like_a_shell() {
    let block = "wyvern agent --a 1 \\\n  --b \"x y\"   # comment\n\
                 srun bash -c 'export S=$(wyvern launch --print-socket); exec app'\n\
                 ip netns exec n0 wyvern stat --watch 1 | head\n# wyvern not this\n";
    let c = wyvern_commands(block);
    assert_eq!(
        c,
        [
            "wyvern agent --a 1    --b \"x y\"",
            "wyvern launch --print-socket",
            "wyvern stat --watch 1"
        ]
    );
    assert_eq!(
        shell_words(&c[0]),
        ["wyvern", "agent", "--a", "1", "--b", "x y"]
    );
    // A bad flag is caught.
    let o = Command::new(env!("CARGO_BIN_EXE_wyvern"))
        .args(["stat", "--wach", "1", "--help"])
        .output()
        .unwrap();
    assert!(!o.status.success());
}

/// The markdown files whose links are checked: the docs, and bench/*.md.
fn link_files() -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut files = doc_files();
    if let Ok(rd) = std::fs::read_dir(root.join("bench")) {
        for e in rd.flatten() {
            if e.path().extension().is_some_and(|x| x == "md") {
                files.push(e.path());
            }
        }
    }
    files.sort();
    files
}

/// The lines of a markdown text outside fenced code blocks, with inline code spans
/// blanked out (links and headings in code are not links and headings), 1-based numbers.
fn prose_lines(md: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut fenced = false;
    for (i, l) in md.lines().enumerate() {
        if l.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut text = String::with_capacity(l.len());
        let mut in_code = false;
        for c in l.chars() {
            if c == '`' {
                in_code = !in_code;
                text.push(' ');
            } else {
                text.push(if in_code { ' ' } else { c });
            }
        }
        out.push((i + 1, text));
    }
    out
}

/// The targets of `[text](target)` and `![alt](target)` links in a line.
fn link_targets(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("](") {
        let after = &rest[i + 2..];
        match after.find(')') {
            Some(j) => {
                let t = after[..j].split_whitespace().next().unwrap_or("");
                out.push(t.trim_matches(|c| c == '<' || c == '>').to_string());
                rest = &after[j..];
            }
            None => break,
        }
    }
    out
}

/// GitHub's anchor for a heading: lower case, punctuation other than `-` and `_` dropped,
/// spaces made `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every anchor a markdown text offers: its headings' slugs (a repeated slug gets `-1`,
/// `-2`, ... as on GitHub) and the ids of `<a id="...">` tags.
fn anchors(md: &str) -> std::collections::HashSet<String> {
    let mut seen = std::collections::HashMap::<String, usize>::new();
    let mut out = std::collections::HashSet::new();
    let mut fenced = false;
    for l in md.lines() {
        if l.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let t = l.trim_start();
        if t.starts_with('#') {
            let h = t.trim_start_matches('#');
            if h.starts_with(' ') {
                let s = slug(h);
                let n = seen.entry(s.clone()).or_insert(0);
                out.insert(if *n == 0 {
                    s.clone()
                } else {
                    format!("{s}-{n}")
                });
                *n += 1;
            }
        }
        let mut rest = l;
        while let Some(i) = rest.find("<a id=\"") {
            let after = &rest[i + 7..];
            if let Some(j) = after.find('"') {
                out.insert(after[..j].to_string());
                rest = &after[j..];
            } else {
                break;
            }
        }
    }
    out
}

/// Every relative link of the docs resolves: the file exists, and the anchor is one of
/// that file's headings or `<a id>`s. Web links are not followed.
#[test]
fn every_relative_link_in_the_docs_resolves() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    let mut failures = Vec::new();
    for f in link_files() {
        let md = std::fs::read_to_string(&f).unwrap();
        let rel = f.strip_prefix(&root).unwrap_or(&f).display().to_string();
        for (line, text) in prose_lines(&md) {
            for target in link_targets(&text) {
                if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                checked += 1;
                let (path, anchor) = match target.split_once('#') {
                    Some((p, a)) => (p, Some(a)),
                    None => (target.as_str(), None),
                };
                let file = if path.is_empty() {
                    f.clone()
                } else {
                    f.parent().unwrap().join(path)
                };
                if !file.exists() {
                    failures.push(format!("{rel}:{line}: `{target}`: no such file"));
                    continue;
                }
                if let Some(a) = anchor {
                    if file.extension().is_some_and(|x| x == "md") {
                        let text = std::fs::read_to_string(&file).unwrap();
                        if !anchors(&text).contains(a) {
                            failures.push(format!(
                                "{rel}:{line}: `{target}`: no heading or <a id> gives #{a}"
                            ));
                        }
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} links do not resolve:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(checked >= 10, "only {checked} relative links found");
    eprintln!("{checked} relative links resolve");
}

/// The link checker itself: targets, slugs and anchors as GitHub makes them; code is not
/// prose.
#[test]
fn links_and_anchors_are_found_like_github() {
    assert_eq!(
        link_targets("see [a](x.md#b) and ![p](../img.png \"t\") or [w](https://e.org)"),
        ["x.md#b", "../img.png", "https://e.org"]
    );
    assert_eq!(
        slug("Metrics (`wyvern agent --metrics ADDR`)"),
        "metrics-wyvern-agent---metrics-addr"
    );
    assert_eq!(
        slug("What no test reaches, and what only stand-ins cover"),
        "what-no-test-reaches-and-what-only-stand-ins-cover"
    );
    let md = "# A\n## Limits\n```sh\n# not a heading\n```\n## Limits\n<a id=\"x-y\"></a>\n";
    let a = anchors(md);
    for want in ["a", "limits", "limits-1", "x-y"] {
        assert!(a.contains(want), "{want}: {a:?}");
    }
    assert!(!a.contains("not-a-heading"), "{a:?}");
    let p = prose_lines("a `[x](nope.md)` b\n```\n[y](nope2.md)\n```\n[z](yes.md)\n");
    let targets: Vec<String> = p.iter().flat_map(|(_, t)| link_targets(t)).collect();
    assert_eq!(targets, ["yes.md"]);
}

/// The README's quick start, run as written (but for `cargo build` and the `PATH` line:
/// this test's own build is used): two agents, `wyvern wait`, a responder, `wyvern ping` and
/// `wyvern bw` through both agents, under `set -e`. Only the ports are replaced (free ones, so that
/// parallel tests do not collide) and the default socket directory is a private one
/// (`XDG_RUNTIME_DIR`). It must exit 0 with both tables and a responder that checked every
/// message and found none damaged.
#[test]
fn the_readme_quick_start_runs() {
    use std::os::unix::process::CommandExt;
    use std::time::{Duration, Instant};
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let md = std::fs::read_to_string(root.join("README.md")).unwrap();
    let block = blocks(&md)
        .into_iter()
        .find(|b| b.lang == "sh" && b.text.contains("wyvern ping --serve"))
        .expect("README.md has a ```sh block with `wyvern ping --serve`");
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (p0, p1) = (free_port(), free_port());
    // `set -e`: a command that fails fails the script (its last line, `wait`, says 0).
    let script: String = std::iter::once("set -e\n".to_string())
        .chain(
            block
                .text
                .lines()
                .filter(|l| !l.starts_with("cargo build") && !l.starts_with("export PATH="))
                .map(|l| {
                    l.replace("127.0.0.1:7470", &format!("127.0.0.1:{p0}"))
                        .replace("127.0.0.1:7471", &format!("127.0.0.1:{p1}"))
                        + "\n"
                }),
        )
        .collect();
    assert!(
        script.contains(&format!("127.0.0.1:{p1}")),
        "the quick start's node list changed: {script}"
    );
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_wyvern")).parent().unwrap();
    let runtime = tempfile::tempdir().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env("PATH", path)
        .env("XDG_RUNTIME_DIR", runtime.path())
        .env_remove("WYVERN_SOCKET")
        .env_remove("SLURM_JOB_ID")
        .env_remove("SLURM_JOB_NODELIST")
        .env_remove("SLURM_STEP_NODELIST")
        .stdout(out.reopen().unwrap())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .expect("run bash");
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // The script waits for what it started; give anything left a moment, then, whatever
    // happened, nothing the script started outlives the test.
    let gone = Instant::now() + Duration::from_secs(10);
    while nix::sys::signal::killpg(pgid, None).is_ok() && Instant::now() < gone {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
    let text = std::fs::read_to_string(out.path()).unwrap();
    let status = status.unwrap_or_else(|| panic!("the quick start ran over 120 s:\n{text}"));
    assert!(
        status.success(),
        "the quick start failed ({status}):\n{text}"
    );
    for want in [
        "agent node 0 ready, 1 peers up",
        "agent node 1 ready, 1 peers up",
        "# wyvern ping: node 0 -> node 1 via tcp (up)",
        "# wyvern bw: node 0 -> node 1 via tcp (up)",
        "   1048576 ",
        " 0 damaged, 0 stray",
    ] {
        assert!(
            text.contains(want),
            "no `{want}` in what it printed:\n{text}"
        );
    }
}
