//! `wyvern stat`: an agent's counters with rates per second, once or every
//! few seconds; `wyvern stat --job`: every node's agent in one table; and how
//! client subcommands report a failure to reach the agent.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use wyvern::agent::stats::Snapshot;

/// Shortest `--watch` and `--interval` period.
const MIN_PERIOD: f64 = 0.1;

/// `wyvern stat`.
#[derive(clap::Args)]
pub struct StatArgs {
    /// The agent's control socket (default: $WYVERN_SOCKET, else the path
    /// `wyvern launch` uses for this node: the job's socket under Slurm).
    #[arg(long, short)]
    socket: Option<PathBuf>,
    /// Node id, when not under Slurm (picks the default socket of that node).
    #[arg(long)]
    node_id: Option<u32>,
    /// Print the agent's snapshot as JSON (one sample, no rates) instead of a table.
    #[arg(long)]
    json: bool,
    /// Refresh every SECS seconds (at least 0.1) until interrupted; each
    /// refresh shows the rates over the last SECS. The screen is cleared
    /// between refreshes only when the output is a terminal.
    #[arg(long, value_name = "SECS", value_parser = parse_watch)]
    watch: Option<f64>,
    /// The table's rates come from two samples this many seconds apart (a
    /// single `wyvern stat` takes that long; 0: one sample, totals only).
    /// With --watch: the first refresh's.
    #[arg(long, value_name = "SECS", default_value_t = 1.0, value_parser = parse_interval)]
    interval: f64,
    /// The whole job: this node's agent asks every other node's agent, over
    /// their links, for a summary of itself (links up, messages and bytes,
    /// failed sends, lost links, malformed frames, resends, the peer with the
    /// largest backlog, CPU time), and prints one row per node, the job's
    /// total and the nodes to look at first. A node that does not answer
    /// within --timeout has a row that says why (link lost, no link, asked
    /// and no answer). Links are made to peers not linked yet (on-demand
    /// links), as `wyvern connect` does. With --json: the rows as JSON.
    #[arg(long)]
    job: bool,
    /// With --job: how long the agent waits for the other nodes' answers
    /// (0.05 to 20 seconds); it replies as soon as every node answered.
    #[arg(long, value_name = "SECS", default_value_t = 2.0, value_parser = parse_timeout)]
    timeout: f64,
}

fn parse_timeout(s: &str) -> Result<f64, String> {
    let v = seconds(s)?;
    if !(0.05..=20.0).contains(&v) {
        return Err(format!(
            "the job view waits 0.05 to 20 seconds for answers (got {s})"
        ));
    }
    Ok(v)
}

fn seconds(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| format!("{s:?} is not a number of seconds"))
}

fn parse_watch(s: &str) -> Result<f64, String> {
    let v = seconds(s)?;
    if v < MIN_PERIOD {
        return Err(format!(
            "the refresh period must be at least {MIN_PERIOD} s (got {s}); without --watch, \
             `wyvern stat` prints once"
        ));
    }
    Ok(v)
}

fn parse_interval(s: &str) -> Result<f64, String> {
    let v = seconds(s)?;
    if v != 0.0 && v < MIN_PERIOD {
        return Err(format!(
            "the sampling interval must be 0 (totals only) or at least {MIN_PERIOD} s (got {s})"
        ));
    }
    Ok(v)
}

/// A client subcommand's failure to talk to the agent, with its causes;
/// when the socket's path was derived rather than named (`--socket`,
/// `WYVERN_SOCKET`) and nothing listens there, where else to look.
pub fn client_error(e: &wyvern::client::Error, named: bool) -> String {
    let mut msg = e.to_string();
    let mut cur = std::error::Error::source(e);
    let mut absent = false;
    while let Some(s) = cur {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            absent |= matches!(
                io.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            );
        }
        cur = s.source();
    }
    if absent && !named {
        msg.push_str(
            " (no agent of this user listens at its default socket; name another with \
             --socket PATH or WYVERN_SOCKET, e.g. `export WYVERN_SOCKET=$(wyvern launch \
             --print-socket)` in a Slurm job)",
        );
    }
    msg
}

/// Writes to stdout; false when it is closed (`| head`): then stop quietly.
fn emit(text: &str) -> bool {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .is_ok()
}

pub fn run(a: StatArgs) -> ExitCode {
    let (path, named) = match crate::launch_cli::client_socket(a.socket.as_deref(), a.node_id) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("wyvern stat: {e}");
            return ExitCode::FAILURE;
        }
    };
    let sample = || {
        wyvern::client::stat(&path).map_err(|e| {
            eprintln!("wyvern stat: {}", client_error(&e, named));
            ExitCode::FAILURE
        })
    };
    let tty = std::io::stdout().is_terminal();
    if a.job {
        return run_job(&a, &path, named, tty);
    }
    if a.json {
        loop {
            let s = match sample() {
                Ok(s) => s,
                Err(c) => return c,
            };
            let text = serde_json::to_string_pretty(&s).expect("serialisable") + "\n";
            if !emit(&text) {
                return ExitCode::SUCCESS;
            }
            match a.watch {
                Some(w) => std::thread::sleep(Duration::from_secs_f64(w)),
                None => return ExitCode::SUCCESS,
            }
        }
    }
    // The first table's rates: two samples `interval` apart (at most one
    // refresh period with --watch); later ones: over the refresh period.
    let first_gap = match a.watch {
        Some(w) => a.interval.min(w),
        None => a.interval,
    };
    let mut prev: Option<Snapshot> = None;
    if first_gap > 0.0 {
        match sample() {
            Ok(s) => prev = Some(s),
            Err(c) => return c,
        }
        std::thread::sleep(Duration::from_secs_f64(first_gap));
    }
    let mut frames = 0u64;
    loop {
        let s = match sample() {
            Ok(s) => s,
            Err(c) => return c,
        };
        let table = s.render_since(prev.as_ref());
        let text = if a.watch.is_none() {
            table
        } else if tty {
            // Clear the screen and home the cursor, then the table.
            format!("\x1b[2J\x1b[H{table}")
        } else if frames == 0 {
            table
        } else {
            format!("\n{table}")
        };
        if let Some(done) = shown(&text, &mut frames, a.watch) {
            return done;
        }
        prev = Some(s);
    }
}

/// `wyvern stat --job`: the job view, once or every `--watch` seconds.
fn run_job(a: &StatArgs, path: &std::path::Path, named: bool, tty: bool) -> ExitCode {
    let mut frames = 0u64;
    loop {
        let v = match wyvern::client::job_stat(path, Duration::from_secs_f64(a.timeout)) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("wyvern stat --job: {}", client_error(&e, named));
                return ExitCode::FAILURE;
            }
        };
        let text = if a.json {
            serde_json::to_string_pretty(&v).expect("serialisable") + "\n"
        } else if a.watch.is_some() && tty {
            format!("\x1b[2J\x1b[H{}", v.render())
        } else if frames > 0 {
            format!("\n{}", v.render())
        } else {
            v.render()
        };
        if let Some(done) = shown(&text, &mut frames, a.watch) {
            return done;
        }
    }
}

/// Show one frame; then, with `--watch`, wait for the next (`None`), else
/// the command is done (also when the reader went away).
fn shown(text: &str, frames: &mut u64, watch: Option<f64>) -> Option<ExitCode> {
    if !emit(text) {
        return Some(ExitCode::SUCCESS);
    }
    *frames += 1;
    match watch {
        Some(w) => {
            std::thread::sleep(Duration::from_secs_f64(w));
            None
        }
        None => Some(ExitCode::SUCCESS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_checked() {
        assert!(parse_watch("0").unwrap_err().contains("at least 0.1 s"));
        assert!(parse_watch("-1").is_err());
        assert!(parse_watch("nan").is_err());
        assert!(parse_watch("inf").is_err());
        assert_eq!(parse_watch("0.5"), Ok(0.5));
        assert_eq!(parse_interval("0"), Ok(0.0));
        assert!(parse_interval("0.01").is_err());
        assert_eq!(parse_interval("2"), Ok(2.0));
        assert!(parse_timeout("0.01").is_err());
        assert!(parse_timeout("21").is_err());
        assert_eq!(parse_timeout("3"), Ok(3.0));
    }
}
