//! Build script. The spine (shm, wire, agent, client, tcp) needs no native library.
//! With the `verbs` feature, rdma-core's libibverbs must be there: say so in one
//! sentence naming the package, before `rdma-sys`'s own build script fails with a
//! panic (`vendor/dpdk-sys/build.rs` does the same for the `dpdk` feature).

/// What the user reads when libibverbs is missing.
const VERBS_MISSING: &str = "wyvern's `verbs` feature needs rdma-core's libibverbs and librdmacm \
with their pkg-config files: install the Debian packages libibverbs-dev and librdmacm-dev \
(apt-get install libibverbs-dev librdmacm-dev)";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_VERBS").is_some() {
        println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
        println!("cargo:rerun-if-env-changed=PKG_CONFIG_LIBDIR");
        for lib in ["libibverbs", "librdmacm"] {
            if pkg_config::Config::new()
                .cargo_metadata(false)
                .env_metadata(false)
                .probe(lib)
                .is_err()
            {
                eprintln!("error: {VERBS_MISSING}.");
                std::process::exit(1);
            }
        }
    }
}
