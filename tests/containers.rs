//! A client in a container, without a container runtime: the client runs in
//! its own user, PID, mount and network namespaces (`unshare`), as a
//! container's process would, and sees nothing of the host's files but the
//! agent's socket directory, mounted where the container expects it. What it
//! needs is exactly that directory: no network (its namespace has only a
//! loopback that is down), no hugetlbfs mount (the pool arrives as a
//! descriptor), no privileges, no shared PID namespace.
//!
//! Root inside a user namespace is not root to the agent: a container of
//! another uid that is not in `allow_gid` is refused, with the reason.
//!
//! Needs root (to make the namespaces and mounts as a container runtime
//! would) and util-linux's `unshare` and `setpriv`; CI runs as root.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Cluster, Proc, WYVERN};

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn root_with_unshare(test: &str) -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED {test}: needs root");
        return false;
    }
    for tool in ["unshare", "setpriv"] {
        if Command::new(tool).arg("--version").output().is_err() {
            eprintln!("SKIPPED {test}: no {tool} (util-linux)");
            return false;
        }
    }
    true
}

/// The shell a container's first process runs: mount the staged socket
/// directory at /run/wyvern (read-only, as deploy/kubernetes/wyvern-client.yaml
/// does), hide the host's socket directory, /run and
/// /dev/shm, print what it can see, then run `wyvern ARGS`.
fn container_script(stage: &Path, host_dir: &Path, args: &str) -> String {
    format!(
        r#"set -eu
mount --make-rprivate /
mount -t tmpfs none /run
mkdir /run/wyvern
mount --move {stage} /run/wyvern
mount -o remount,bind,ro /run/wyvern
mount -t tmpfs none {host}
mount -t tmpfs none /dev/shm
echo "container: pid $$; interfaces $(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\n' ' ')"
echo "container: sockets $(ls /run/wyvern | tr '\n' ' '); host directory has $(ls -A {host} | wc -l) entries; $(touch /run/wyvern/x 2>/dev/null && echo writable || echo read-only)"
exec {wyvern} {args}
"#,
        stage = stage.display(),
        host = host_dir.display(),
        wyvern = WYVERN,
    )
}

/// `unshare` a user (root mapped to the caller), PID, mount and network
/// namespace and run `script` in it; `stage` is bind-mounted from `dir`
/// first (outside the container's view, so the script can move it in).
fn in_container(dir: &Path, stage: &Path, script: &str) -> Command {
    std::fs::create_dir_all(stage).unwrap();
    let mut c = Command::new("unshare");
    c.args([
        "--user",
        "--map-root-user",
        "--pid",
        "--fork",
        "--mount",
        "--mount-proc",
        "--net",
        "--",
        "sh",
        "-c",
    ])
    .arg(format!(
        "mount --bind {dir} {stage} && {script}",
        dir = dir.display(),
        stage = stage.display()
    ))
    .env_remove("WYVERN_SOCKET");
    c
}

/// A stage directory outside every path the container hides, removed on drop.
struct Stage(std::path::PathBuf);

impl Drop for Stage {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn a_client_in_its_own_namespaces_sees_only_the_socket_directory_and_exchanges_messages() {
    let test =
        "a_client_in_its_own_namespaces_sees_only_the_socket_directory_and_exchanges_messages";
    if !root_with_unshare(test) {
        return;
    }
    let c = Cluster::start(2, &[]);
    let stage = Stage(std::path::PathBuf::from(format!(
        "/mnt/wyvern-container-{}",
        std::process::id()
    )));
    let sock_name = c
        .socket(1)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    // The responder of node 1 is the container's process; node 0's ping and
    // bw reach it through both agents.
    let script = container_script(
        &stage.0,
        &c.dir,
        &format!("ping --serve --socket /run/wyvern/{sock_name}"),
    );
    let mut cmd = in_container(&c.dir, &stage.0, &script);
    cmd.stderr(Stdio::inherit());
    let srv = Proc::spawn(cmd, "container responder");
    let t = Duration::from_secs(30);
    let seen = srv.line(t);
    assert!(seen.starts_with("container: pid 1;"), "{seen}");
    assert_eq!(
        seen.split("interfaces ").nth(1).map(str::trim),
        Some("lo"),
        "the container's network namespace has only its loopback: {seen}"
    );
    let files = srv.line(t);
    assert!(
        files.contains(&format!(" {sock_name} "))
            && files.contains("host directory has 0 entries")
            && files.ends_with("read-only"),
        "the container sees its socket directory and nothing of the host's: {files}"
    );
    let ready = srv.line(t);
    assert!(ready.starts_with("wyvern responder on node 1"), "{ready}");

    // The agent knows the container's process by the kernel's pid in its
    // own PID namespace, not by the 1 the process knows itself by.
    let inner = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", srv.pid())).unwrap();
    let inner: u32 = inner.split_whitespace().next().unwrap().parse().unwrap();
    let clients = c.stat(1)["clients"].as_array().cloned().unwrap_or_default();
    assert!(
        clients.iter().any(|cl| cl["pid"] == inner),
        "stat of node 1 shows the container's client by pid {inner}: {clients:?}"
    );

    let sock0 = c.socket(0).display().to_string();
    for tool in ["ping", "bw"] {
        let t0 = Instant::now();
        let o = Command::new(WYVERN)
            .args([
                tool, "--to", "1", "--socket", &sock0, "--sizes", "1,4k,64k", "--iters", "64",
                "--time", "5",
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{tool} to the container: {}", text(&o));
        assert!(t0.elapsed() < Duration::from_secs(60));
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(inner as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let summary = srv.line(t);
    assert!(
        summary.contains("stopped:") && summary.contains(" 0 damaged"),
        "{summary}"
    );
    let pings: u64 = summary
        .split("stopped: ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(pings > 0, "the container echoed nothing: {summary}");
}

#[test]
fn root_in_a_user_namespace_of_another_uid_is_refused() {
    let test = "root_in_a_user_namespace_of_another_uid_is_refused";
    if !root_with_unshare(test) {
        return;
    }
    let c = Cluster::start(1, &[]);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&c.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    // uid 65534 makes a user namespace in which it is root, as a rootless
    // container does; the agent sees uid 65534.
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["unshare", "--user", "--map-root-user", "--", WYVERN, "stat"])
        .args(["--interval", "0", "--socket"])
        .arg(c.socket(0))
        .env_remove("WYVERN_SOCKET")
        .output()
        .unwrap();
    let t = text(&o);
    if t.contains("unshare failed") || t.contains("Operation not permitted") {
        // Unprivileged user namespaces are off on this kernel: the refusal
        // of a plain uid is tested in tests/cli.rs.
        eprintln!("SKIPPED {test}: unprivileged user namespaces are disabled: {t}");
        return;
    }
    // The socket is mode 0700 and owned by a uid the namespace does not map:
    // the kernel refuses the connection, and the client says why in the
    // container's terms (it is root there, uid 65534 to the agent).
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("permission denied: root in a user namespace (uid 65534 outside it")
            && t.contains("not mapped into this user namespace"),
        "{t}"
    );

    // Through an open directory and socket the connection is made; the
    // listener's user is not mapped either, so the client will not take it
    // for its agent unless told to.
    std::fs::set_permissions(c.socket(0), std::fs::Permissions::from_mode(0o777)).unwrap();
    let stat = |agent_uid: Option<&str>| {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .args(["unshare", "--user", "--map-root-user", "--", WYVERN, "stat"])
            .args(["--interval", "0", "--socket"])
            .arg(c.socket(0))
            .env_remove("WYVERN_SOCKET")
            .env_remove("WYVERN_AGENT_UID");
        if let Some(u) = agent_uid {
            cmd.env("WYVERN_AGENT_UID", u);
        }
        cmd.output().unwrap()
    };
    let o = stat(None);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("runs as uid 65534")
            && t.contains("not mapped into this user namespace")
            && t.contains("WYVERN_AGENT_UID=65534"),
        "{t}"
    );
    // Told to, it asks; the agent refuses by the uid the kernel gives it,
    // however root the client is in its namespace.
    let o = stat(Some("65534"));
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("permission denied: uid 65534") && t.contains("only root may attach"),
        "the agent refuses by the uid it sees: {t}"
    );
}
