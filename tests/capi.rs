//! The C API end to end: `scripts/install.sh` installs what `cargo test` just
//! built into a temporary prefix, `cc` compiles the C programs of `tests/c/`
//! and `examples/c/` against it through pkg-config (shared and static), and
//! they run against two real agents over loopback TCP.
//!
//! The libraries come from the profile directory of this test's own build
//! (`target/<profile>/deps`, where `cargo test` leaves the cdylib and the
//! staticlib it builds with the rlib): no extra `cargo build` is needed.

mod common;

use std::ffi::CStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::ptr::null_mut;
use std::time::Duration;

use common::{Cluster, Proc};
use wyvern::capi::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// An installed prefix in a temporary directory.
struct Prefix {
    dir: tempfile::TempDir,
}

impl Prefix {
    fn install() -> Prefix {
        let dir = tempfile::tempdir().expect("temp dir");
        let build = Path::new(common::WYVERN).parent().expect("profile dir");
        let out = Command::new("bash")
            .arg(Path::new(ROOT).join("scripts/install.sh"))
            .arg("--prefix")
            .arg(dir.path())
            .arg("--from-build")
            .arg(build)
            .output()
            .expect("run scripts/install.sh");
        check(&out, "scripts/install.sh");
        for f in [
            "bin/wyvern",
            "include/wyvern.h",
            "lib/libwyvern.so",
            "lib/libwyvern.a",
            "lib/pkgconfig/wyvern.pc",
            "lib/pkgconfig/wyvern-static.pc",
        ] {
            assert!(
                dir.path().join(f).is_file(),
                "install.sh did not install {f}"
            );
        }
        Prefix { dir }
    }

    /// `pkg-config --cflags --libs PKG` against this prefix.
    fn flags(&self, pkg: &str) -> Vec<String> {
        let out = Command::new("pkg-config")
            .env("PKG_CONFIG_PATH", self.dir.path().join("lib/pkgconfig"))
            .args(["--cflags", "--libs", pkg])
            .output()
            .expect("run pkg-config");
        check(&out, "pkg-config");
        String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .map(String::from)
            .collect()
    }

    /// Compile C source `src` (relative to the crate) into an executable,
    /// linked through pkg-config package `pkg`.
    fn cc(&self, src: &str, pkg: &str, name: &str) -> PathBuf {
        let exe = self.dir.path().join(name);
        let out = Command::new("cc")
            .args([
                "-std=c11", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-pthread",
            ])
            .arg("-o")
            .arg(&exe)
            .arg(Path::new(ROOT).join(src))
            .args(self.flags(pkg))
            .output()
            .expect("run cc");
        check(&out, &format!("cc {src} ({pkg})"));
        exe
    }
}

fn check(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn agents() -> Cluster {
    Cluster::start(2, &["--unknown-ep-grace-ms", "200"])
}

#[test]
fn c_program_exchanges_messages_and_gets_errors_for_bad_arguments() {
    let p = Prefix::install();
    let exe = p.cc("tests/c/capi_test.c", "wyvern", "capi_test");
    // Linked to the installed shared library, found through the rpath alone
    // (cargo test sets LD_LIBRARY_PATH to its target directory: not here).
    let ldd = Command::new("ldd")
        .arg(&exe)
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("ldd");
    let ldd = String::from_utf8_lossy(&ldd.stdout).into_owned();
    // Through its soname (libwyvern.so.0.MINOR), the link install.sh makes.
    let want = p.dir.path().join("lib").join(soname());
    assert!(
        ldd.contains(&want.display().to_string()),
        "capi_test does not load {}:\n{ldd}",
        want.display()
    );
    let c = agents();
    let out = Command::new(&exe)
        .arg(c.socket(0))
        .arg(c.socket(1))
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("run capi_test");
    check(&out, "capi_test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let n: u32 = stdout
        .trim()
        .strip_prefix("capi_test: ")
        .and_then(|s| s.strip_suffix(" checks passed"))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unexpected output: {stdout}"));
    assert!(n > 500, "only {n} checks ran");
    // Every block came back: sent ones, freed ones, and the one b still held
    // unsent when it detached.
    for i in 0..2 {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut s = c.stat(i);
        while s["blocks_free"] != s["blocks_total"] && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            s = c.stat(i);
        }
        assert_eq!(s["blocks_free"], s["blocks_total"], "agent {i}: {s}");
    }
}

#[test]
fn the_pingpong_example_runs_linked_shared_and_static() {
    let p = Prefix::install();
    let c = agents();
    for (pkg, name) in [("wyvern", "pingpong"), ("wyvern-static", "pingpong-static")] {
        let exe = p.cc("examples/c/pingpong.c", pkg, name);
        for size in ["64", "1048576"] {
            let mut cmd = Command::new(&exe);
            cmd.arg(c.socket(1))
                .arg("pong")
                .env_remove("LD_LIBRARY_PATH");
            let pong = Proc::spawn(cmd, &format!("{name} pong"));
            assert_eq!(pong.line(Duration::from_secs(20)), "ready", "{name}");
            let out = Command::new(&exe)
                .arg(c.socket(0))
                .args(["ping", "1", "50", size])
                .env_remove("LD_LIBRARY_PATH")
                .output()
                .expect("run ping");
            check(&out, &format!("{name} ping {size}"));
            let s = String::from_utf8_lossy(&out.stdout);
            assert!(
                s.contains(&format!("ping: 50 round trips of {size} bytes")),
                "{name}: {s}"
            );
            assert_eq!(
                pong.line(Duration::from_secs(20)),
                "pong: echoed 50 messages",
                "{name} {size}"
            );
        }
    }
}

/// The soname build.rs gives the library: libwyvern.so.MAJOR, or
/// libwyvern.so.0.MINOR while the major is 0.
fn soname() -> String {
    match env!("CARGO_PKG_VERSION_MAJOR") {
        "0" => format!("libwyvern.so.0.{}", env!("CARGO_PKG_VERSION_MINOR")),
        m => format!("libwyvern.so.{m}"),
    }
}

/// Cargo's version as `WYVERN_API_VERSION` counts it.
fn cargo_api_version() -> i32 {
    let part = |s: &str| s.parse::<i32>().expect("a version number");
    part(env!("CARGO_PKG_VERSION_MAJOR")) * 10000
        + part(env!("CARGO_PKG_VERSION_MINOR")) * 100
        + part(env!("CARGO_PKG_VERSION_PATCH"))
}

/// The installed shared library carries its soname, is installed under its
/// full version with the soname and `libwyvern.so` as links, and a C program
/// sees the header's version and the library's agree (both Cargo's).
#[test]
fn the_library_has_a_soname_and_tells_its_version() {
    let p = Prefix::install();
    let lib = p.dir.path().join("lib");
    let real = format!("libwyvern.so.{}", env!("CARGO_PKG_VERSION"));
    assert!(lib.join(&real).is_file(), "no lib/{real}");
    for (link, to) in [(soname(), real.clone()), ("libwyvern.so".into(), soname())] {
        let got = std::fs::read_link(lib.join(&link)).unwrap_or_else(|e| panic!("lib/{link}: {e}"));
        assert_eq!(got, Path::new(&to), "lib/{link}");
    }
    let elf = Command::new("readelf")
        .arg("-d")
        .arg(lib.join(&real))
        .output()
        .expect("run readelf");
    check(&elf, "readelf -d");
    let dynamic = String::from_utf8_lossy(&elf.stdout);
    assert!(
        dynamic.contains(&format!("Library soname: [{}]", soname())),
        "no soname {} in:\n{dynamic}",
        soname()
    );
    let exe = p.cc("tests/c/version_test.c", "wyvern", "version_test");
    let out = Command::new(&exe)
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("run version_test");
    check(&out, "version_test");
    let v = env!("CARGO_PKG_VERSION");
    let n = cargo_api_version();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("header {v} {n} library {n} {v}")
    );
    // In process too.
    assert_eq!(wyvern_api_version(), n);
    assert_eq!(WYVERN_API_VERSION, n);
    // SAFETY: a static NUL-terminated string.
    let s = unsafe { CStr::from_ptr(wyvern_version_string()) };
    assert_eq!(s.to_str(), Ok(v));
}

fn last_error() -> String {
    // SAFETY: a NUL-terminated string valid until the next failing call on
    // this thread.
    unsafe { CStr::from_ptr(wyvern_last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// The same API called from Rust, where the registry can be looked at: a
/// detach forgets every handle of its client, messages included, and a
/// second thread is refused while the first is inside a call.
#[test]
fn a_detach_forgets_every_handle_and_threads_take_turns() {
    let c = agents();
    let sock = |i: usize| std::ffi::CString::new(c.socket(i).display().to_string()).unwrap();
    let before = live_handles();
    let (mut a, mut b) = (null_mut(), null_mut());
    let (mut ea, mut eb) = (null_mut(), null_mut());
    // SAFETY: valid strings and out-pointers.
    unsafe {
        assert_eq!(
            wyvern_attach(sock(0).as_ptr(), null_mut(), &mut a),
            WYVERN_OK
        );
        assert_eq!(
            wyvern_attach(sock(1).as_ptr(), c"rust".as_ptr(), &mut b),
            WYVERN_OK
        );
        assert_eq!(wyvern_endpoint_open(a, 3, &mut ea), WYVERN_OK);
        assert_eq!(wyvern_endpoint_open(b, 4, &mut eb), WYVERN_OK);
    }
    let big = vec![0xa5u8; 2 << 20];
    let mut held = Vec::new();
    for len in [0, 10, big.len()] {
        // SAFETY: `big` has at least `len` bytes.
        let rc = unsafe {
            wyvern_send(
                eb,
                0,
                3,
                big.as_ptr().cast(),
                len,
                WYVERN_DELIVERED,
                10_000_000,
            )
        };
        assert_eq!(rc, WYVERN_OK, "{}", last_error());
        let mut m = null_mut();
        // SAFETY: a valid out-pointer.
        assert_eq!(unsafe { wyvern_recv_zc(ea, &mut m, 10_000_000) }, WYVERN_OK);
        assert_eq!(wyvern_msg_len(m), len as i64);
        held.push(m);
    }
    // SAFETY: a valid 2 MiB view, as wyvern_msg_len said.
    let view =
        unsafe { std::slice::from_raw_parts(wyvern_msg_data(held[2]).cast::<u8>(), big.len()) };
    assert!(view == big.as_slice());
    assert_eq!(wyvern_msg_zero_copy(held[2]), 1);
    assert_eq!(
        live_handles(),
        before + 7,
        "2 clients, 2 endpoints, 3 messages"
    );

    // Another thread waits in a receive on client a: this thread is refused.
    let ea_id = ea as usize;
    let t = std::thread::spawn(move || {
        let ep: *mut wyvern_endpoint = std::ptr::without_provenance_mut(ea_id);
        let mut buf = [0u8; 8];
        let mut len = 0;
        loop {
            // SAFETY: valid buffer and out-pointer.
            let rc = unsafe { wyvern_recv(ep, buf.as_mut_ptr().cast(), 8, &mut len, 700_000) };
            // The main thread's probe may hold the client for an instant.
            if rc != WYVERN_EBUSY {
                return rc;
            }
        }
    });
    // Probe until the other thread is inside its receive.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while wyvern_msg_len(held[0]) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the thread never got in"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(wyvern_msg_len(held[0]), i64::from(WYVERN_EBUSY));
    assert_eq!(wyvern_msg_release(held[0]), WYVERN_EBUSY);
    assert!(last_error().contains("another thread"), "{}", last_error());
    assert_eq!(t.join().unwrap(), WYVERN_ETIMEDOUT);
    assert_eq!(wyvern_msg_release(held[0]), WYVERN_OK, "its turn now");

    assert_eq!(wyvern_detach(a), WYVERN_OK);
    assert_eq!(live_handles(), before + 2, "only b and its endpoint remain");
    assert_eq!(wyvern_msg_release(held[1]), WYVERN_EBADHANDLE);
    assert!(wyvern_msg_data(held[2]).is_null());
    // b's send to a's endpoint, gone with a.
    // SAFETY: a valid 1-byte buffer.
    let rc = unsafe {
        wyvern_send(
            eb,
            0,
            3,
            c"x".as_ptr().cast(),
            1,
            WYVERN_DELIVERED,
            10_000_000,
        )
    };
    assert_eq!(rc, WYVERN_EUNKNOWN_ENDPOINT, "{}", last_error());
    assert_eq!(wyvern_endpoint_close(eb), WYVERN_OK);
    assert_eq!(
        live_handles(),
        before + 2,
        "a closed endpoint is remembered as closed"
    );
    assert_eq!(wyvern_poll(eb), WYVERN_ECLOSED);
    assert_eq!(wyvern_detach(b), WYVERN_OK);
    assert_eq!(live_handles(), before);
    assert_eq!(wyvern_poll(eb), WYVERN_EBADHANDLE);
}

/// The header stands alone, in strict C99 and in C++ (its `extern "C"`).
#[test]
fn the_header_compiles_as_strict_c_and_as_cpp() {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = dir.path().join("h.c");
    std::fs::write(
        &src,
        "#include <wyvern.h>\nint main(void) {\n    wyvern_client *c = 0;\n    \
         wyvern_async_error e;\n    (void)e;\n    return wyvern_attach(\"x\", 0, &c) == WYVERN_OK;\n}\n",
    )
    .unwrap();
    let inc = Path::new(ROOT).join("include");
    for (compiler, args) in [
        ("cc", &["-std=c99", "-pedantic"][..]),
        ("c++", &["-std=c++11", "-x", "c++"][..]),
    ] {
        let out = Command::new(compiler)
            .args(["-fsyntax-only", "-Wall", "-Wextra", "-Werror"])
            .args(args)
            .arg("-I")
            .arg(&inc)
            .arg(&src)
            .output()
            .unwrap_or_else(|e| panic!("run {compiler}: {e}"));
        check(&out, &format!("{compiler} {args:?} include/wyvern.h"));
    }
}
