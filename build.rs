//! Build script. The spine (shm, wire, agent, client, tcp) needs no native library.
//! With the `verbs` feature, rdma-core's libibverbs must be there: say so in one
//! sentence naming the package, before `rdma-sys`'s own build script fails with a
//! panic (`vendor/dpdk-sys/build.rs` does the same for the `dpdk` feature).
//!
//! It also records, for `wyvern info` and `wyvern_build_info`:
//! - `WYVERN_GIT_COMMIT`: the commit of a release build (`git rev-parse HEAD`,
//!   re-read when HEAD moves), empty for other profiles or outside a git checkout.
//!   Only release builds follow HEAD, so that a commit does not rebuild every test
//!   binary of a developer's debug tree.
//! - `WYVERN_DPDK_BUILT_WITH`: the DPDK version the `dpdk` feature was built against.
//!
//! And it gives the C library (the cdylib) its soname, see `soname()`.

use std::process::Command;

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
    // The C library's soname (what a program linked to it records, and looks
    // for at run time): libwyvern.so.MAJOR, or libwyvern.so.0.MINOR while the
    // major is 0, where Cargo's semver lets every minor release break (the
    // rule cargo-c follows). scripts/install.sh installs the file under the
    // full version with the soname and libwyvern.so as links to it.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,{}", soname());
    // Set by vendor/dpdk-sys's build script (`links = "dpdk"`, `cargo:version=`).
    let dpdk = std::env::var("DEP_DPDK_VERSION").unwrap_or_default();
    println!("cargo:rustc-env=WYVERN_DPDK_BUILT_WITH={dpdk}");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let commit = if release { git_commit() } else { None };
    println!(
        "cargo:rustc-env=WYVERN_GIT_COMMIT={}",
        commit.unwrap_or_default()
    );
}

/// `git rev-parse HEAD` of the source tree, and the files whose change moves it
/// (HEAD, the branch's ref, packed-refs) as rerun triggers.
fn git_commit() -> Option<String> {
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git").args(args).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let commit = git(&["rev-parse", "HEAD"])?;
    let mut watch = vec![git(&["rev-parse", "--git-path", "HEAD"])];
    watch.push(git(&["rev-parse", "--git-path", "packed-refs"]));
    if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch.push(git(&["rev-parse", "--git-path", &r]));
    }
    // A file that does not exist would rerun this script on every build.
    for p in watch
        .into_iter()
        .flatten()
        .filter(|p| std::path::Path::new(p).exists())
    {
        println!("cargo:rerun-if-changed={p}");
    }
    Some(commit)
}

/// `libwyvern.so.MAJOR` (`libwyvern.so.0.MINOR` for 0.x) of this package's version.
fn soname() -> String {
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_default();
    let minor = std::env::var("CARGO_PKG_VERSION_MINOR").unwrap_or_default();
    match major.as_str() {
        "0" => format!("libwyvern.so.0.{minor}"),
        m => format!("libwyvern.so.{m}"),
    }
}
