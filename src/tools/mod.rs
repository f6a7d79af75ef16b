//! The tools a user runs beside the agent: `wyvern info` (what this build and
//! machine offer), `wyvern ping` and `wyvern bw` (latency and bandwidth to
//! another node's agent). See docs/tools.md.

pub mod info;
pub mod perf;
