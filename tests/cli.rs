//! The client subcommands as a user runs them: `wyvern stat` (rates, aligned plain
//! columns when piped, `--watch`), the socket they find (`--socket`, `WYVERN_SOCKET`, the
//! Slurm job's socket) and what a user who may not attach is told.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{Cluster, Proc, WYVERN};

const T: Duration = Duration::from_secs(60);

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `wyvern ARGS` with a clean environment as to sockets and Slurm.
fn wyvern(args: &[&str]) -> Command {
    let mut c = Command::new(WYVERN);
    c.args(args);
    for k in [
        "WYVERN_SOCKET",
        "SLURM_JOB_ID",
        "SLURM_JOB_NODELIST",
        "SLURM_STEP_NODELIST",
        "SLURMD_NODENAME",
        "SLURM_NODEID",
        "SLURM_LOCALID",
    ] {
        c.env_remove(k);
    }
    c
}

/// The cells of a table line with their start and end columns: cells are separated
/// by two blanks or more (a cell such as `1.50 KiB` holds single blanks).
fn cells(line: &str) -> Vec<(usize, usize, &str)> {
    let b = line.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && b[i] == b' ' {
            i += 1;
        }
        if i == b.len() {
            break;
        }
        let start = i;
        while i < b.len() && !(b[i] == b' ' && (i + 1 == b.len() || b[i + 1] == b' ')) {
            i += 1;
        }
        out.push((start, i, &line[start..i]));
    }
    out
}

/// Columns of text in `wyvern stat`'s tables start (left-aligned) or end (numbers,
/// right-aligned) where their header does, in every row.
fn assert_aligned(table: &str) {
    const LEFT: [&str; 7] = ["peer", "addr", "via", "state", "slot", "name", "endpoints"];
    let lines: Vec<&str> = table.lines().collect();
    for (n, head) in lines.iter().enumerate() {
        if !(head.starts_with("peer ") || head.starts_with("slot ")) {
            continue;
        }
        let h = cells(head);
        for row in lines[n + 1..].iter().take_while(|l| !l.is_empty()) {
            let r = cells(row);
            assert_eq!(
                r.len(),
                h.len(),
                "cells of {row:?} under {head:?}:\n{table}"
            );
            for (hc, rc) in h.iter().zip(&r) {
                if LEFT.contains(&hc.2) {
                    assert_eq!(hc.0, rc.0, "column {} not aligned:\n{table}", hc.2);
                } else {
                    assert_eq!(hc.1, rc.1, "column {} not aligned:\n{table}", hc.2);
                }
            }
        }
    }
}

/// The cell of `row` under the header column `col` of the table that starts with `head`.
fn cell<'a>(table: &'a str, head: &str, row: &str, col: &str) -> &'a str {
    let lines: Vec<&str> = table.lines().collect();
    let h = lines
        .iter()
        .position(|l| l.starts_with(head))
        .unwrap_or_else(|| panic!("no table {head:?}:\n{table}"));
    let i = cells(lines[h])
        .iter()
        .position(|c| c.2 == col)
        .unwrap_or_else(|| panic!("no column {col}:\n{table}"));
    let r = lines[h + 1..]
        .iter()
        .find(|l| l.starts_with(row))
        .unwrap_or_else(|| panic!("no row {row:?}:\n{table}"));
    cells(r)[i].2
}

#[test]
fn piped_stat_shows_rates_in_aligned_plain_columns() {
    let c = Cluster::start(2, &[]);
    let rx = c.peer(
        1,
        &["--ep", "1", "--sizes", "1000", "recv", "--count", "3000"],
    );
    // About 1000 messages a second for about 3 s.
    let tx = c.peer(
        0,
        &[
            "--ep", "2", "--sizes", "1000", "send", "--to", "1:1", "--count", "3000", "--gap-us",
            "1000",
        ],
    );
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    let o = wyvern(&["stat", "--socket"])
        .arg(c.socket(0))
        .output()
        .unwrap();
    let took = t0.elapsed();
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    // Not a terminal: no escape codes, no trailing blanks.
    assert!(!out.contains('\x1b'), "{out:?}");
    assert!(out.lines().all(|l| !l.ends_with(' ')), "{out}");
    // A single `wyvern stat` takes two samples 1 s (--interval) apart.
    assert!(took >= Duration::from_millis(900), "{took:?}");
    assert!(out.contains("rates: per second over the last 1."), "{out}");
    assert_aligned(&out);
    // Node 1 gets about 1000 messages (of 1000 bytes) a second: a rate, with units.
    let rate = cell(&out, "peer ", "1 ", "tx_msg/s");
    let n: f64 = rate.trim_end_matches('k').parse().unwrap_or(0.0);
    assert!(
        n >= 50.0 || rate.ends_with('k'),
        "tx_msg/s {rate:?} while sending:\n{out}"
    );
    let bytes = cell(&out, "peer ", "1 ", "tx_rate");
    assert!(
        bytes.ends_with("KiB/s") || bytes.ends_with("MiB/s"),
        "tx_rate {bytes:?}:\n{out}"
    );
    // The sending client's submissions per second too.
    let sub = cell(&out, "slot ", "", "sub/s");
    assert_ne!(sub, "-", "{out}");
    common::assert_ok("receiver", &rx.result(T));
    common::assert_ok("sender", &tx.result(T));

    // --interval 0: one sample, totals only, no rate columns.
    let o = wyvern(&["stat", "--interval", "0", "--socket"])
        .arg(c.socket(0))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        out.contains("no rates") && !out.contains("tx_rate"),
        "{out}"
    );
    assert!(cell(&out, "peer ", "1 ", "msgs_tx") == "3000", "{out}");
    assert_eq!(cell(&out, "peer ", "1 ", "bytes_tx"), "2.86 MiB", "{out}");
    assert_aligned(&out);
}

#[test]
fn stat_watch_refreshes_without_clearing_a_pipe_and_refuses_zero() {
    let c = Cluster::start(1, &[]);
    let mut cmd = wyvern(&["stat", "--watch", "0.3", "--interval", "0.2", "--socket"]);
    cmd.arg(c.socket(0));
    let p = Proc::spawn(cmd, "wyvern stat --watch");
    let mut frames = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = String::new();
    while frames < 3 && Instant::now() < deadline {
        let l = p.line(Duration::from_secs(10));
        assert!(!l.contains('\x1b'), "escape code in a pipe: {l:?}");
        if l.starts_with("node 0 of 1") {
            frames += 1;
        }
        if l.starts_with("rates:") {
            assert!(l.contains("over the last 0."), "{l}");
        }
        seen.push_str(&l);
        seen.push('\n');
    }
    assert_eq!(frames, 3, "{seen}");
    drop(p);

    for bad in ["0", "0.01", "-1", "soon"] {
        let o = wyvern(&["stat", &format!("--watch={bad}"), "--socket"])
            .arg(c.socket(0))
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "--watch {bad}: {}", text(&o));
        let t = text(&o);
        assert!(t.contains("--watch"), "{t}");
        if bad == "0" {
            assert!(t.contains("at least 0.1 s"), "{t}");
        }
    }
}

#[test]
fn client_subcommands_find_the_socket_like_wait() {
    let c = Cluster::start(1, &[]);
    let sock = c.socket(0);
    // WYVERN_SOCKET, for stat, break-link and wait.
    let o = wyvern(&["stat", "--interval", "0"])
        .env("WYVERN_SOCKET", &sock)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("node 0 of 1"), "{}", text(&o));
    let o = wyvern(&["break-link", "--peer", "7"])
        .env("WYVERN_SOCKET", &sock)
        .output()
        .unwrap();
    let t = text(&o);
    assert!(!t.contains("cannot reach"), "{t}");
    assert!(t.contains("agent refused"), "{t}");
    let o = wyvern(&["wait", "--timeout", "10"])
        .env("WYVERN_SOCKET", &sock)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    // A named socket where nothing listens: that path, and no talk of default sockets.
    let o = wyvern(&["stat"])
        .env("WYVERN_SOCKET", c.dir.join("nothing.sock"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("nothing.sock") && !t.contains("default socket"),
        "{t}"
    );
    // --socket wins over WYVERN_SOCKET.
    let o = wyvern(&["stat", "--interval", "0", "--socket"])
        .arg(&sock)
        .env("WYVERN_SOCKET", c.dir.join("nothing.sock"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));

    // Under Slurm: the job's socket of this node, as `wyvern launch` makes it.
    let rt = tempfile::tempdir().unwrap();
    let slurm = [
        ("XDG_RUNTIME_DIR", rt.path().to_str().unwrap()),
        ("SLURM_JOB_ID", "4711"),
        ("SLURM_JOB_NODELIST", "wyvtest[01-02]"),
        ("SLURMD_NODENAME", "wyvtest01"),
        ("SLURM_NODEID", "0"),
    ];
    let o = wyvern(&["launch", "--print-socket"])
        .envs(slurm)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let job_sock = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(job_sock.ends_with("wyvern-job4711-0.sock"), "{job_sock}");
    let mut agent = wyvern(&["agent", "--no-hugepages", "--socket", &job_sock]);
    agent.stderr(std::process::Stdio::null());
    let agent = Proc::spawn(agent, "agent at the job's socket");
    assert!(agent.line(T).starts_with("wyvern agent ready"));
    let o = wyvern(&["stat", "--interval", "0"])
        .envs(slurm)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("node 0 of 1"), "{}", text(&o));
    let o = wyvern(&["break-link", "--peer", "7"])
        .envs(slurm)
        .output()
        .unwrap();
    assert!(text(&o).contains("agent refused"), "{}", text(&o));
    // Not under Slurm, nothing at the default socket: said so, with where else to look.
    let o = wyvern(&["stat"])
        .env("XDG_RUNTIME_DIR", rt.path().join("empty"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("cannot reach the agent")
            && t.contains("default socket")
            && t.contains("WYVERN_SOCKET"),
        "{t}"
    );
    drop(agent);
}

/// `wyvern ARGS` as uid 65534 with primary group 65534 and the supplementary `groups`.
fn as_nobody(groups: &str, args: &[&str], sock: &Path) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534"])
        .arg(if groups.is_empty() {
            "--clear-groups".to_string()
        } else {
            format!("--groups={groups}")
        })
        .arg(WYVERN)
        .args(args)
        .arg("--socket")
        .arg(sock)
        .env_remove("WYVERN_SOCKET")
        .output()
        .expect("run setpriv")
}

#[test]
fn a_user_who_may_not_attach_is_told_who_may() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED a_user_who_may_not_attach_is_told_who_may: needs root");
        return;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("SKIPPED a_user_who_may_not_attach_is_told_who_may: no setpriv");
        return;
    }
    // The agent's own user is root, no allow_gid: only root may.
    let c = Cluster::start(1, &[]);
    let o = as_nobody("", &["stat", "--interval", "0"], &c.socket(0));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("permission denied: uid 65534")
            && t.contains("only root may")
            && t.contains("no allow_gid"),
        "{t}"
    );
    assert!(!t.contains("cannot reach"), "{t}");
    // `wyvern wait` says so at once instead of waiting for an agent that will not let it in.
    let t0 = Instant::now();
    let o = as_nobody("", &["wait", "--timeout", "30"], &c.socket(0));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("permission denied"), "{}", text(&o));
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    drop(c);

    // allow_gid 4242: its members may, by supplementary group too; others are told so.
    let c = Cluster::start(1, &["--allow-gid", "4242"]);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&c.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = as_nobody("", &["stat", "--interval", "0"], &c.socket(0));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("permission denied: uid 65534")
            && t.contains("members of group 4242")
            && t.contains("allow_gid"),
        "{t}"
    );
    let o = as_nobody("4242", &["stat", "--interval", "0"], &c.socket(0));
    assert!(o.status.success(), "a member of group 4242: {}", text(&o));
    assert!(text(&o).contains("node 0 of 1"), "{}", text(&o));
}

/// `wyvern break-link --hold-ms`: refused, with the reason, where the link
/// cannot be held (tcp) and beyond an hour; nothing is broken then.
#[test]
fn break_link_hold_is_refused_where_it_cannot_hold() {
    if common::transport() != "tcp" {
        eprintln!("skipped: the tcp refusal is checked on tcp (tests/hybrid.rs holds a udp link)");
        return;
    }
    let c = Cluster::start(2, &[]);
    let hold = |ms: &str| {
        Command::new(WYVERN)
            .args(["break-link", "--peer", "1", "--hold-ms", ms, "--socket"])
            .arg(c.socket(0))
            .output()
            .unwrap()
    };
    let o = hold("1000");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("node 1's link is on tcp: only udp and dpdk links can be held down"),
        "{}",
        text(&o)
    );
    let o = hold("3600001");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("at most 3600000 (an hour)"),
        "{}",
        text(&o)
    );
    // The link was left alone both times.
    let s = c.stat(0);
    assert_eq!(s["peers"][0]["state"], "up", "{s}");
    assert_eq!(s["peers"][0]["counters"]["resumes"], 0, "{s}");
}
