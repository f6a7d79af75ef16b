//! How agents move frames between nodes.
//!
//! The spine ships the portable `tcp` transport: one non-blocking connection
//! per peer pair, frames written whole, large-message chunks written straight
//! from their pool block. The kernel-bypass transports (`dpdk`, `verbs`) come
//! as further modules here; the agent drives a link through the same few
//! operations (queue an [`tcp::Out`], flush, fill, take frames), which the
//! second back end will turn into a trait.

pub mod tcp;
