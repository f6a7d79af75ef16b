//! The Python binding (`python/wyvern`, cffi over libwyvern.so) end to end:
//! runs `scripts/test-python.sh`, which runs pytest in a cached venv
//! (`target/pyenv`) against the library and the `wyvern` binary this
//! `cargo test` just built, with two real agents over loopback TCP.
//!
//! Skipped, loudly, when `python3` is absent or `WYVERN_SKIP_PYTHON=1`.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const WYVERN: &str = env!("CARGO_BIN_EXE_wyvern");

/// Cold (the venv is made and numpy, pytest, cffi installed) this takes
/// ~30 s; warm ~15 s.
const LIMIT: Duration = Duration::from_secs(600);

#[test]
fn python_binding_suite() {
    if std::env::var("WYVERN_SKIP_PYTHON").as_deref() == Ok("1") {
        eprintln!("\n*** SKIPPED tests/python.rs: WYVERN_SKIP_PYTHON=1 ***\n");
        return;
    }
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let found = Command::new(&python)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !found {
        eprintln!(
            "\n*** SKIPPED tests/python.rs: no {python} on PATH; the Python binding is NOT tested \
             (Debian: apt-get install python3 python3-venv) ***\n"
        );
        return;
    }
    let build = Path::new(WYVERN).parent().expect("profile dir");
    let mut child = Command::new("bash")
        .arg(Path::new(ROOT).join("scripts/test-python.sh"))
        .current_dir(ROOT)
        .env("WYVERN_BUILD_DIR", build)
        .env("WYVERN_BIN", WYVERN)
        .env_remove("WYVERN_LIB")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0) // on timeout the whole group goes: pytest and its agents
        .spawn()
        .expect("run scripts/test-python.sh");
    // Drain both pipes on threads so a full pipe never blocks the script.
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if start.elapsed() > LIMIT {
            let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (out, err) = (t_out.join().unwrap(), t_err.join().unwrap());
    println!("{out}");
    eprintln!("{err}");
    match status {
        None => panic!("scripts/test-python.sh did not finish within {LIMIT:?}"),
        Some(s) => assert!(
            s.success(),
            "scripts/test-python.sh failed ({s}):\n{out}\n{err}"
        ),
    }
    assert!(out.contains(" passed"), "no pytest summary:\n{out}");
}
