//! `wyvern launch` / `wyvern wait` under a real Slurm: two "nodes" (n1, n2)
//! on this machine started by `scripts/slurm-local.sh`, one batch job that
//! runs the agents as a background step, waits for them, exchanges messages
//! node 0 → node 1 with `wyvern-peer` client steps, and tears the agents
//! down. Skipped (loudly) only when the Slurm daemons cannot start at all.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const WYVERN: &str = env!("CARGO_BIN_EXE_wyvern");
const PEER: &str = env!("CARGO_BIN_EXE_wyvern-peer");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Run a command under `timeout(1)`.
fn run(secs: u32, cmd: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new("timeout");
    c.args(["-k", "5", &secs.to_string(), cmd]).args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wyvern-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Our hostlist expansion agrees with `scontrol show hostnames` (which needs
/// only a slurm.conf to read, no daemon).
#[test]
fn hostlist_expansion_matches_scontrol() {
    if Command::new("scontrol").arg("--version").output().is_err() {
        eprintln!("*** SKIPPED hostlist_expansion_matches_scontrol: no scontrol (scripts/slurm-local.sh start installs it)");
        return;
    }
    let dir = tmpdir("hostlist");
    let conf = dir.join("slurm.conf");
    std::fs::write(&conf, "ClusterName=x\nSlurmctldHost=localhost\n").unwrap();
    let conf = conf.to_str().unwrap();
    // Where we differ from Slurm 22.05 (both cases Slurm never generates in
    // a job's node list, which has one bracket per item): it refuses text
    // after a lone bracket (`a[1-2]b`), which we accept; and with three or
    // more brackets in one name (`r[1-2]n[1-2]x[7-8]`) its order is not
    // leftmost-slowest (`r1n1x7 r1n1x8 r2n1x7 ...`), ours is. Everything
    // here is valid for both.
    for expr in [
        "node[01-04,07]",
        "n[1-3],gpu[08-09]",
        "a[1-2]b[3-4]",
        "r[1-2]n[01-03]",
        "a[1,3]b[2,5],ab[1-2]cd[3-4]",
        "n[8-10],n[09-11],x[007]",
        "n[001-3],login,host-1.example.org",
        "a, b,c[1,3-4,6]",
        "cn[0998-1002]",
    ] {
        let o = run(
            10,
            "scontrol",
            &["show", "hostnames", expr],
            &[("SLURM_CONF", conf)],
        );
        assert!(o.status.success(), "scontrol on {expr}: {}", text(&o));
        let want: Vec<String> = String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        let got = wyvern::launch::hostlist::expand(expr).unwrap();
        assert_eq!(got, want, "{expr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Stops the local Slurm on drop, if this test started it. Holds a lock
/// meanwhile, so that two test runs on one machine (two worktrees) take
/// turns instead of stopping each other's daemons.
struct Slurm {
    conf: String,
    started_here: bool,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl Slurm {
    fn start() -> Option<Slurm> {
        use nix::fcntl::{Flock, FlockArg};
        let path = std::env::temp_dir().join("wyvern-slurm-test.lock");
        let mut file = std::fs::File::create(&path).unwrap();
        let deadline = Instant::now() + Duration::from_secs(180);
        let lock = loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(l) => break l,
                Err((f, _)) => {
                    assert!(
                        Instant::now() < deadline,
                        "another test run held {} for 180 s",
                        path.display()
                    );
                    file = f;
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        };
        let script = repo().join("scripts/slurm-local.sh");
        let script = script.to_str().unwrap();
        let was_running = run(20, script, &["status"], &[]).status.success();
        let o = run(600, script, &["start"], &[]);
        if !o.status.success() {
            eprintln!(
                "\n*** SKIPPED slurm tests: the local Slurm daemons cannot start:\n{}\n",
                text(&o)
            );
            return None;
        }
        Some(Slurm {
            conf: format!(
                "{}/slurm.conf",
                std::env::var("WYVERN_SLURM_DIR").unwrap_or_else(|_| "/tmp/wyvern-slurm".into())
            ),
            started_here: !was_running,
            _lock: lock,
        })
    }
}

impl Drop for Slurm {
    fn drop(&mut self) {
        if self.started_here {
            let script = repo().join("scripts/slurm-local.sh");
            let o = run(30, script.to_str().unwrap(), &["stop"], &[]);
            if !o.status.success() {
                eprintln!("slurm-local.sh stop: {}", text(&o));
            }
        }
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// Submit `script` (2 nodes, 2 tasks each, 2 minutes) and poll until the job ends (faster
/// than `sbatch --wait`, whose polls back off to seconds). Returns whether
/// it COMPLETED (exit 0), and a report of everything it wrote in `dir`.
fn run_job(slurm: &Slurm, dir: &Path, tag: &str, script: &str) -> (bool, String) {
    let env = [("SLURM_CONF", slurm.conf.as_str())];
    let job = dir.join(format!("{tag}.sh"));
    std::fs::write(&job, script).unwrap();
    let out = dir.join(format!("{tag}.out"));
    let name = format!("wyvern-test-{}", std::process::id());
    let o = run(
        20,
        "sbatch",
        &[
            "--parsable",
            "-N2",
            "--ntasks-per-node=2",
            "-t",
            "2",
            "-J",
            &name,
            "-o",
            out.to_str().unwrap(),
            job.to_str().unwrap(),
        ],
        &env,
    );
    assert!(o.status.success(), "sbatch: {}", text(&o));
    let id = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let deadline = Instant::now() + Duration::from_secs(90);
    let state = loop {
        let o = run(10, "scontrol", &["-o", "show", "job", &id], &env);
        let line = String::from_utf8_lossy(&o.stdout).to_string();
        let state = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("JobState="))
            .unwrap_or("?")
            .to_string();
        if !matches!(
            state.as_str(),
            "PENDING" | "CONFIGURING" | "RUNNING" | "COMPLETING" | "?"
        ) {
            break state;
        }
        if Instant::now() > deadline {
            run(10, "scancel", &[&id], &env);
            break format!("{state} (cancelled by the test after 90 s)");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let report = format!("job {id}: {state}\n{}", run_job_report(dir));
    (state == "COMPLETED", report)
}

/// Everything a job wrote in `dir` (`*.out`, `*.err`).
fn run_job_report(dir: &Path) -> String {
    let mut report = String::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "out" || e == "err"))
        .collect();
    files.sort();
    for f in files {
        report += &format!("---- {}\n{}", f.display(), read(&f));
    }
    report
}

fn json_result(out: &str) -> serde_json::Value {
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON result in {out:?}"));
    serde_json::from_str(line).unwrap()
}

#[test]
fn launch_wait_and_messages_under_slurm() {
    let t0 = Instant::now();
    let Some(slurm) = Slurm::start() else { return };
    let dir = tmpdir("slurm-job");
    let d = dir.to_str().unwrap();
    let port = 20000 + (std::process::id() % 20000) as u16;
    let count = 200;
    // The job: agents as a background step (one per node), `wyvern wait`
    // on every node, one client step on both nodes (node 0 sends to node 1,
    // each finds its agent by `wyvern launch --print-socket`), then the
    // agents are stopped by signalling their step.
    let script = format!(
        r#"#!/bin/bash
set -u
W={WYVERN}
P={PEER}
D={d}
srun --overlap -n "$SLURM_NNODES" --ntasks-per-node=1 -J wyvern-agents -o "$D/launch-%n.out" -e "$D/launch-%n.err" \
    "$W" launch --port {port} --no-hugepages --block-bytes 16MiB --heartbeat-ms 100 --unknown-ep-grace-ms 10000 &
LAUNCH=$!
# Two tasks per node: `wyvern wait` (and --print-socket) work from any task.
if ! timeout 40 srun --overlap --ntasks-per-node=2 "$W" wait --timeout 30; then
    echo "WAIT FAILED"; kill $LAUNCH; wait $LAUNCH; exit 3
fi
timeout 40 srun --overlap -n "$SLURM_NNODES" --ntasks-per-node=1 -o "$D/client-%n.out" -e "$D/client-%n.err" bash -c '
    S=$("$0" launch --print-socket) || exit 1
    echo "node $SLURMD_NODENAME socket $S" >&2
    if [ "$SLURM_NODEID" = 0 ]; then
        exec "$1" --socket "$S" --ep 1 send --to 1:5 --count {count} --delivered
    else
        exec "$1" --socket "$S" --ep 5 recv --count {count}
    fi' "$W" "$P"
CLIENT=$?
# SIGTERM to the tasks of the launch step only (found by its name: its
# step id depends on which srun registered first).
STEP=$(squeue -h -s -j "$SLURM_JOB_ID" -o '%i %j' | awk '$2 == "wyvern-agents" {{print $1}}')
echo "launch step $STEP"
scancel --signal=TERM "$STEP"
timeout 20 bash -c "while kill -0 $LAUNCH 2>/dev/null; do sleep 0.1; done" || kill $LAUNCH
wait $LAUNCH
LAUNCHED=$?
echo "client $CLIENT launch-step $LAUNCHED"
[ "$CLIENT" = 0 ] && [ "$LAUNCHED" = 0 ]
"#
    );
    let (ok, report) = run_job(&slurm, &dir, "job", &script);
    assert!(ok, "the job failed:\n{report}");
    // Both agents ran on this machine: same host, consecutive ports,
    // distinct sockets (per job and node id).
    for (i, p) in [(0, port), (1, port + 1)] {
        let l = read(&dir.join(format!("launch-{i}.out")));
        assert!(
            l.contains(&format!("wyvern agent ready: tcp 127.0.0.1:{p}")),
            "agent {i} not on port {p}:\n{report}"
        );
    }
    let sockets: Vec<String> = (0..2)
        .map(|i| {
            let e = read(&dir.join(format!("client-{i}.err")));
            e.lines()
                .find_map(|l| l.split_once(" socket ").map(|(_, s)| s.to_string()))
                .unwrap_or_else(|| panic!("no socket line from client {i}:\n{report}"))
        })
        .collect();
    assert_ne!(sockets[0], sockets[1]);
    assert!(
        sockets[0].ends_with("-0.sock") && sockets[1].ends_with("-1.sock"),
        "{sockets:?}"
    );
    let tx = json_result(&read(&dir.join("client-0.out")));
    let rx = json_result(&read(&dir.join("client-1.out")));
    assert_eq!(tx["ok"], true, "{report}");
    assert_eq!(rx["ok"], true, "{report}");
    assert_eq!(tx["sent"], count, "{tx}");
    assert_eq!(rx["received"], count, "{rx}");
    assert_eq!(rx["corrupt"], 0, "{rx}");
    assert_eq!(rx["out_of_order"], 0, "{rx}");
    // Teardown: the agents stopped cleanly on SIGTERM (the launch step
    // exited 0) and removed their sockets.
    assert!(
        read(&dir.join("job.out")).contains("client 0 launch-step 0"),
        "launch step did not end cleanly:\n{report}"
    );
    for s in &sockets {
        assert!(!Path::new(s).exists(), "{s} left behind:\n{report}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let alive = sockets
            .iter()
            .filter(|s| wyvern::client::stat(s.as_str()).is_ok())
            .count();
        if alive == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{alive} agents still answer after the job:\n{report}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A job that ends with its agents still running: Slurm stops the step
    // with SIGTERM and the agents exit cleanly (their sockets removed).
    // On the udp transport this time (agent flags pass through).
    let dir2 = tmpdir("slurm-job-end");
    let d2 = dir2.to_str().unwrap();
    let script = format!(
        r#"#!/bin/bash
srun --overlap -n "$SLURM_NNODES" --ntasks-per-node=1 -J wyvern-agents -o "{d2}/launch-%n.out" -e "{d2}/launch-%n.err" \
    {WYVERN} launch --port {port} --transport udp --no-hugepages --block-bytes 16MiB --heartbeat-ms 100 &
timeout 40 srun --overlap -n "$SLURM_NNODES" --ntasks-per-node=1 {WYVERN} wait --timeout 30 || exit 3
for n in 0 1; do echo "socket $n $(srun --overlap -N1 -n1 -r $n {WYVERN} launch --print-socket)"; done
"#
    );
    let (ok, report) = run_job(&slurm, &dir2, "end", &script);
    assert!(ok, "the second job failed:\n{report}");
    for (i, p) in [(0, port), (1, port + 1)] {
        let l = read(&dir2.join(format!("launch-{i}.out")));
        assert!(
            l.contains(&format!("wyvern agent ready: udp 127.0.0.1:{p}")),
            "agent {i} not on udp port {p}:\n{report}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    for i in 0..2 {
        let sock = read(&dir2.join("end.out"))
            .lines()
            .find_map(|l| l.strip_prefix(&format!("socket {i} ")).map(str::to_string))
            .unwrap_or_else(|| panic!("no socket {i}:\n{report}"));
        assert!(sock.ends_with(&format!("-{i}.sock")), "{sock}");
        loop {
            let log = read(&dir2.join(format!("launch-{i}.err")));
            if log.contains("agent stopping") && !Path::new(&sock).exists() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "agent {i} did not stop cleanly at the end of the job:\n{}",
                run_job_report(&dir2)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let _ = std::fs::remove_dir_all(&dir2);
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("slurm job test took {:.1} s", t0.elapsed().as_secs_f64());
    drop(slurm);
}

/// `wyvern launch` with a faked Slurm environment (no daemons): node id
/// from SLURMD_NODENAME, the same-host port rule, per-job sockets, a second
/// task per node refused for launching but not for `--print-socket`.
#[test]
fn launch_reads_the_slurm_environment() {
    let port = (20000 + (std::process::id() % 20000) + 10).to_string();
    let launch = |env: &[(&str, &str)], extra: &[&str]| {
        let mut args = vec!["launch", "--port", &port];
        args.extend(extra);
        let mut e = vec![
            ("SLURM_JOB_NODELIST", "localhost,127.0.0.[1-2]"),
            ("SLURM_JOB_ID", "77"),
        ];
        e.extend(env);
        run(20, WYVERN, &args, &e)
    };
    let o = launch(&[("SLURMD_NODENAME", "127.0.0.2")], &["--dry-run"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let p: u16 = port.parse().unwrap();
    let sock = wyvern::launch::socket_path(Some("77"), 2);
    let want = format!(
        "node_id 2\nsocket {}\nnode 0 localhost 127.0.0.1:{p}\nnode 1 127.0.0.1 127.0.0.1:{}\nnode 2 127.0.0.2 127.0.0.2:{p}\n",
        sock.display(),
        p + 1
    );
    assert_eq!(out, want);
    // SLURM_NODEID when the node name is not in the list.
    let o = launch(
        &[("SLURMD_NODENAME", "elsewhere"), ("SLURM_NODEID", "1")],
        &["--print-socket"],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.trim().ends_with("wyvern-job77-1.sock"), "{}", text(&o));
    // A second task on the node: --print-socket works, launching is refused.
    let env = [("SLURMD_NODENAME", "localhost"), ("SLURM_LOCALID", "1")];
    let o = launch(&env, &["--print-socket"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = launch(&env, &[]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--ntasks-per-node=1"),
        "{}",
        text(&o)
    );
    // A bad hostlist is named.
    let o = run(
        20,
        WYVERN,
        &["launch", "--dry-run"],
        &[("SLURM_JOB_NODELIST", "n[3-1]"), ("SLURMD_NODENAME", "n1")],
    );
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("bad hostlist \"n[3-1]\""),
        "{}",
        text(&o)
    );
}

/// Without Slurm: two agents from one nodes file (same host, so ports P and
/// P+1), `wyvern wait` on each, messages between them; and `wyvern wait`'s
/// error when no agent comes.
#[test]
fn launch_from_a_nodes_file_without_slurm() {
    let dir = tmpdir("nodes-file");
    let file = dir.join("nodes.txt");
    std::fs::write(
        &file,
        "# two agents on this machine\n127.0.0.1\n127.0.0.1\n",
    )
    .unwrap();
    let port = (20000 + (std::process::id() % 20000) + 20).to_string();
    let sock = |i: usize| dir.join(format!("agent{i}.sock"));
    let mut agents = Vec::new();
    for i in 0..2 {
        let log = std::fs::File::create(dir.join(format!("agent{i}.log"))).unwrap();
        let child = Command::new(WYVERN)
            .args([
                "launch",
                "--nodes-file",
                file.to_str().unwrap(),
                "--port",
                &port,
            ])
            .args([
                "--node-id",
                &i.to_string(),
                "--no-hugepages",
                "--block-bytes",
                "16MiB",
            ])
            .arg("--socket")
            .arg(sock(i))
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        agents.push(Kill(child));
    }
    for i in 0..2 {
        let o = run(
            30,
            WYVERN,
            &[
                "wait",
                "--timeout",
                "20",
                "--socket",
                sock(i).to_str().unwrap(),
            ],
            &[],
        );
        let logs = (0..2)
            .map(|i| read(&dir.join(format!("agent{i}.log"))))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(o.status.success(), "wait {i}: {}\n{logs}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stdout)
                .contains(&format!("agent node {i} ready, 1 peers up")),
            "{}",
            text(&o)
        );
    }
    // Node 0 sends to node 1.
    let s1 = sock(1).to_str().unwrap().to_string();
    let rx = std::thread::spawn(move || {
        run(
            30,
            PEER,
            &["--socket", &s1, "--ep", "5", "recv", "--count", "50"],
            &[],
        )
    });
    let s0 = sock(0);
    let tx = run(
        30,
        PEER,
        &[
            "--socket",
            s0.to_str().unwrap(),
            "--ep",
            "1",
            "send",
            "--to",
            "1:5",
            "--count",
            "50",
        ],
        &[],
    );
    let rx = rx.join().unwrap();
    let (t, r) = (
        json_result(&String::from_utf8_lossy(&tx.stdout)),
        json_result(&String::from_utf8_lossy(&rx.stdout)),
    );
    assert!(t["ok"] == true && r["ok"] == true, "{t} {r}");
    assert_eq!(r["received"], 50);
    assert_eq!(r["out_of_order"], 0);
    // The same-host rule: ports P and P+1.
    let p: u16 = port.parse().unwrap();
    for (i, q) in [(0, p), (1, p + 1)] {
        let log = read(&dir.join(format!("agent{i}.log")));
        assert!(
            log.contains(&format!("peers on tcp 127.0.0.1:{q}")),
            "{log}"
        );
    }
    drop(agents);
    // No agent: a clear error, exit status 1, within the timeout.
    let t0 = Instant::now();
    let none = dir.join("none.sock");
    let o = run(
        20,
        WYVERN,
        &[
            "wait",
            "--timeout",
            "0.5",
            "--socket",
            none.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("wyvern wait: not ready after") && err.contains("none.sock"),
        "{err}"
    );
    assert!(t0.elapsed() < Duration::from_secs(5));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Kills its child on drop.
struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
