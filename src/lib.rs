//! # wyvern
//!
//! A node-level transport agent for HPC clusters. Application processes do
//! not link a network stack: they attach to their node's agent
//! ([`client::Client`]) and hand it messages through hugepage-backed
//! shared-memory rings ([`shm`]). The agent ([`agent::Agent`]) polls those
//! rings, aggregates small messages from every process per destination node
//! into frames ([`wire`]), and moves them over a transport ([`transport`]).
//!
//! Layers, bottom to top (each knows nothing of the ones above it):
//! `shm` and `wire` → `transport` → `agent` → `client`, `capi`, `launch`.
//! docs/architecture.md draws them and the agent's rooms.
//!
//! `unsafe` code lives only in [`shm`] (raw shared memory, descriptor
//! hand-over), [`capi`] (the C API: raw pointers from C) and the FFI back
//! ends `transport::dpdk` and `transport::verbs` (with their features); every
//! other module forbids it.

#![warn(missing_docs)]

#[deny(unsafe_code)]
pub mod agent;
pub mod capi;
#[deny(unsafe_code)]
pub mod client;
#[deny(unsafe_code)]
pub mod clock;
#[deny(unsafe_code)]
pub mod config;
#[deny(unsafe_code)]
/// Spin, yield or sleep: the idle policy of the agent's and clients' polling loops.
pub mod idle;
#[deny(unsafe_code)]
pub mod launch;
#[deny(unsafe_code)]
pub mod local;
#[deny(unsafe_code)]
pub mod proto;
pub mod shm;
#[deny(unsafe_code)]
pub mod slab;
#[deny(unsafe_code)]
pub mod transport;
#[deny(unsafe_code)]
pub mod wire;
