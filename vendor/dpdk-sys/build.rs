//! Finds the system's DPDK with pkg-config, generates the Rust bindings with bindgen
//! (a tight allowlist over `wrapper.h`), and compiles two pieces of C:
//! - the wrappers bindgen writes for DPDK's `static inline` functions (`wrap_static_fns`),
//!   so `rte_eth_rx_burst`, `rte_pktmbuf_alloc`, … become real symbols Rust can call;
//! - `src/shim.c`: the `rte_errno` accessor and the mbuf macros as functions (for tests).
//!
//! Environment:
//! - `WYVERN_DPDK_MARCH`: the `-march` for the C and for bindgen's parse (default
//!   `x86-64-v2` on x86-64, the floor Debian's DPDK is built for; DPDK's headers need
//!   SSSE3/SSE4). Never `native`: a binary built on one node must run on every node.
//! - `PKG_CONFIG`, `PKG_CONFIG_PATH`: as usual, to find another DPDK build.

use std::env;
use std::path::PathBuf;
use std::process::Command;

/// The oldest DPDK we bind (the ethdev/mbuf ABI of the 22.11 LTS).
const MIN_VERSION: &str = "22.11";

/// What the user reads when DPDK is missing: one sentence naming the package.
const MISSING: &str = "wyvern's `dpdk` feature needs DPDK >= 22.11 and its pkg-config file \
(libdpdk.pc): install the Debian package libdpdk-dev (apt-get install libdpdk-dev)";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-changed=src/shim.c");
    println!("cargo:rerun-if-env-changed=WYVERN_DPDK_MARCH");

    let lib = match pkg_config::Config::new()
        .atleast_version(MIN_VERSION)
        .probe("libdpdk")
    {
        Ok(lib) => lib,
        Err(e) => {
            // The one sentence a user needs; pkg-config's own (long) words only when
            // DPDK is there but did not do (too old, broken .pc file).
            eprintln!("error: {MISSING}.");
            if let Some(found) = installed_version() {
                eprintln!(
                    "(found DPDK {found}; pkg-config said: {})",
                    e.to_string().trim()
                );
            }
            std::process::exit(1);
        }
    };
    println!("cargo:version={}", lib.version);

    let crate_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("set by cargo"));
    let cflags = dpdk_cflags();

    // -------------------------------------------------------------- bindings
    let wrappers = out_dir.join("static_fns");
    let mut builder = bindgen::Builder::default()
        .header(crate_dir.join("wrapper.h").to_string_lossy())
        .clang_args(&cflags)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .parse_callbacks(Box::new(CComments))
        .wrap_static_fns(true)
        .wrap_static_fns_path(&wrappers)
        .derive_default(true)
        .derive_debug(true)
        // Values read back from DPDK stay integers: an unknown value in a Rust enum is UB.
        .default_enum_style(bindgen::EnumVariation::Consts)
        .prepend_enum_name(false)
        .layout_tests(true)
        .generate_comments(true);
    for f in FUNCTIONS {
        builder = builder.allowlist_function(f);
    }
    for t in TYPES {
        builder = builder.allowlist_type(t);
    }
    for v in VARS {
        builder = builder.allowlist_var(v);
    }
    for b in BLOCKED {
        builder = builder.blocklist_function(b);
    }
    let bindings = builder.generate().unwrap_or_else(|e| {
        eprintln!("error: bindgen could not process DPDK's headers ({e}); is libclang installed (Debian: libclang-dev)?");
        std::process::exit(1);
    });
    bindings
        .write_to_file(out_dir.join("bindings.rs"))
        .expect("write bindings.rs into OUT_DIR");

    // ------------------------------------------------------------------- C
    let mut cc = cc::Build::new();
    cc.file(wrappers.with_extension("c"))
        .file(crate_dir.join("src/shim.c"))
        .include(&crate_dir)
        .define("ALLOW_EXPERIMENTAL_API", None)
        .warnings(false);
    for f in &cflags {
        cc.flag(f);
    }
    cc.compile("wyvern_dpdk_shim");
}

/// DPDK's doc comments are Doxygen, not Markdown: their indented lines would become Rust
/// code blocks that `cargo test --doc` tries to compile. Keep them verbatim, as text.
#[derive(Debug)]
struct CComments;

impl bindgen::callbacks::ParseCallbacks for CComments {
    fn process_comment(&self, comment: &str) -> Option<String> {
        Some(format!("```text\n{}\n```", comment.replace("```", "'''")))
    }
}

/// The version of an installed libdpdk.pc, whatever it is.
fn installed_version() -> Option<String> {
    let pkg_config = env::var("PKG_CONFIG").unwrap_or_else(|_| "pkg-config".into());
    let out = Command::new(pkg_config)
        .args(["--modversion", "libdpdk"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// DPDK's own cflags (include paths, `-include rte_config.h`, …) with its `-march`
/// replaced by ours, plus what bindgen and the C wrappers both need.
fn dpdk_cflags() -> Vec<String> {
    let pkg_config = env::var("PKG_CONFIG").unwrap_or_else(|_| "pkg-config".into());
    let out = Command::new(&pkg_config)
        .args(["--cflags", "libdpdk"])
        .output()
        .unwrap_or_else(|e| {
            eprintln!("error: {MISSING} (running {pkg_config}: {e}).");
            std::process::exit(1);
        });
    if !out.status.success() {
        eprintln!("error: {MISSING}.");
        std::process::exit(1);
    }
    // DPDK's cflags have no quoted arguments, so splitting on whitespace is exact.
    let mut flags: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|f| !f.starts_with("-march=") && !f.starts_with("-mtune="))
        .map(str::to_owned)
        .collect();

    let target_arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let march = match env::var("WYVERN_DPDK_MARCH") {
        Ok(m) if m == "native" => {
            eprintln!(
                "error: WYVERN_DPDK_MARCH=native is refused: a binary built on one node must run on every node; name an ISA level (e.g. x86-64-v2, x86-64-v3)."
            );
            std::process::exit(1);
        }
        Ok(m) if !m.is_empty() => Some(m),
        _ if target_arch == "x86_64" => Some("x86-64-v2".to_owned()),
        _ => None,
    };
    if let Some(m) = march {
        flags.push(format!("-march={m}"));
    }
    flags.push("-DALLOW_EXPERIMENTAL_API".to_owned());
    flags
}

/// Functions we call. Static inline ones get C wrappers (`wrap_static_fns`).
const FUNCTIONS: &[&str] = &[
    // EAL
    "rte_eal_init",
    "rte_eal_cleanup",
    "rte_strerror",
    "rte_lcore_id",
    "rte_lcore_count",
    "rte_socket_id",
    "rte_get_main_lcore",
    "rte_dev_probe",
    "rte_dev_remove",
    // ethdev: control
    "rte_eth_dev_count_avail",
    "rte_eth_dev_is_valid_port",
    "rte_eth_dev_get_port_by_name",
    "rte_eth_dev_get_name_by_port",
    "rte_eth_dev_info_get",
    "rte_eth_dev_adjust_nb_rx_tx_desc",
    "rte_eth_dev_configure",
    "rte_eth_rx_queue_setup",
    "rte_eth_tx_queue_setup",
    "rte_eth_dev_start",
    "rte_eth_dev_stop",
    "rte_eth_dev_close",
    "rte_eth_dev_socket_id",
    "rte_eth_dev_set_mtu",
    "rte_eth_dev_get_mtu",
    "rte_eth_macaddr_get",
    "rte_eth_link_get_nowait",
    "rte_eth_stats_get",
    "rte_eth_stats_reset",
    "rte_eth_promiscuous_enable",
    "rte_eth_promiscuous_get",
    // ethdev: data path (static inline)
    "rte_eth_rx_burst",
    "rte_eth_tx_burst",
    // mempool / mbuf
    "rte_pktmbuf_pool_create",
    "rte_mempool_free",
    "rte_mempool_avail_count",
    "rte_mempool_in_use_count",
    "rte_mempool_lookup",
    "rte_pktmbuf_alloc",
    "rte_pktmbuf_free",
    "rte_pktmbuf_alloc_bulk",
    "rte_pktmbuf_free_bulk",
    "rte_pktmbuf_reset",
    "rte_pktmbuf_append",
    "rte_pktmbuf_prepend",
    "rte_pktmbuf_trim",
    "rte_pktmbuf_adj",
    "rte_pktmbuf_headroom",
    "rte_pktmbuf_tailroom",
    "rte_pktmbuf_data_room_size",
    "rte_pktmbuf_attach_extbuf",
    "rte_pktmbuf_ext_shinfo_init_helper",
    "rte_mbuf_refcnt_read",
    "rte_mbuf_ext_refcnt_read",
    "rte_mbuf_ext_refcnt_set",
    "rte_pktmbuf_chain",
    "rte_mem_virt2iova",
    // shim.c
    "wyvern_.*",
];

/// Types named directly by our code (what they use comes along).
const TYPES: &[&str] = &[
    "rte_mbuf",
    "rte_mempool",
    "rte_mbuf_ext_shared_info",
    "rte_eth_conf",
    "rte_eth_dev_info",
    "rte_eth_link",
    "rte_eth_stats",
    "rte_eth_rxconf",
    "rte_eth_txconf",
    "rte_ether_addr",
    "rte_ether_hdr",
    "rte_iova_t",
];

/// Constants (plain `#define`s and enum values).
const VARS: &[&str] = &[
    "RTE_MAX_ETHPORTS",
    "RTE_MAX_LCORE",
    "RTE_PKTMBUF_HEADROOM",
    "RTE_MBUF_DEFAULT_BUF_SIZE",
    "RTE_MBUF_DEFAULT_DATAROOM",
    "RTE_ETH_NAME_MAX_LEN",
    "RTE_ETHER_ADDR_LEN",
    "RTE_ETHER_HDR_LEN",
    "RTE_ETHER_MTU",
    "RTE_ETHER_MIN_LEN",
    "RTE_ETHER_MAX_LEN",
    "RTE_ETH_LINK_.*",
    "RTE_ETH_SPEED_NUM_.*",
    "RTE_ETH_MQ_RX_NONE",
    "RTE_ETH_MQ_TX_NONE",
    "SOCKET_ID_ANY",
    "LCORE_ID_ANY",
    "RTE_MEMPOOL_CACHE_MAX_SIZE",
    "RTE_BAD_IOVA",
];

/// Pulled in by the types above but not wanted.
const BLOCKED: &[&str] = &[
    // Trace points (static inline in DPDK, would only add wrappers).
    "__rte_.*trace.*",
    "rte_.*_trace_.*",
];
