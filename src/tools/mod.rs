//! The tools a user runs beside the agent: `wyvern info` (what this build and
//! machine offer), `wyvern doctor` (a preflight of an agent's configuration
//! on this machine), `wyvern ping` and `wyvern bw` (latency and bandwidth to
//! another node's agent). See docs/tools.md.

/// `println!` through [`out`]: flushed, and quiet when the reader went away.
macro_rules! outln {
    ($($t:tt)*) => {
        $crate::tools::out(&format!("{}\n", format_args!($($t)*)))
    };
}

pub mod doctor;
pub mod info;
pub mod perf;

use std::io::Write;

/// Print `s` to stdout and flush (a row is progress). A reader that went away
/// (`wyvern bw | head -3`) ends the program quietly instead of a panic.
pub fn out(s: &str) {
    let mut o = std::io::stdout().lock();
    if let Err(e) = o.write_all(s.as_bytes()).and_then(|()| o.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
    }
}
