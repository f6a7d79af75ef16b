//! The user's tools: `wyvern info`, `wyvern ping`/`bw` against a responder on
//! another agent, and the Prometheus page's conventions.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{Cluster, Proc, WYVERN};

const T: Duration = Duration::from_secs(120);

/// `wyvern ARGS` on node `i` of the cluster (inside its namespace on dpdk).
fn wyvern_on(c: &Cluster, i: usize, args: &[&str]) -> Command {
    let mut cmd = match c.wrap.get(i).filter(|w| !w.is_empty()) {
        Some(w) => {
            let mut cmd = Command::new(&w[0]);
            cmd.args(&w[1..]).arg(WYVERN);
            cmd
        }
        None => Command::new(WYVERN),
    };
    cmd.args(args);
    cmd
}

/// Run to completion, killed after `t` (every tool run here is bounded).
fn run_bounded(mut cmd: Command, t: Duration) -> Output {
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("start wyvern");
    let deadline = Instant::now() + t;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "{cmd:?} still running after {t:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn read_num(p: &Path) -> u64 {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn info_reports_every_section_true_hugepages_and_the_effective_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, "heartbeat_ms = 123\nidle = \"spin\"\n").unwrap();
    let cfg_s = cfg.display().to_string();

    // Human report: the file's value, and a flag over the file's.
    let o = run_bounded(
        {
            let mut c = Command::new(WYVERN);
            c.args([
                "info",
                "-c",
                &cfg_s,
                "--idle",
                "adaptive",
                "--max-clients",
                "7",
            ]);
            c
        },
        T,
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    for section in [
        "wyvern 0.1.0",
        "features:",
        "transports: tcp, udp",
        "# RDMA devices",
        "# DPDK",
        "# Hugepages",
        "# Memory locking",
        "RLIMIT_MEMLOCK",
        "# Effective configuration",
    ] {
        assert!(out.contains(section), "no {section:?} in:\n{out}");
    }
    assert!(out.contains("heartbeat_ms = 123"), "{out}");
    assert!(out.contains("idle = \"adaptive\""), "the flag wins: {out}");
    assert!(out.contains("max_clients = 7"), "{out}");
    if cfg!(feature = "dpdk") {
        assert!(out.contains("vdev drivers:"), "{out}");
    }

    // JSON: the numbers against the kernel's. Agents of other tests take and
    // give back hugepages meanwhile: a mismatch is retried a few times.
    let info_json = || -> serde_json::Value {
        let o = run_bounded(
            {
                let mut c = Command::new(WYVERN);
                c.args(["info", "--json", "-c", &cfg_s]);
                c
            },
            T,
        );
        let (out, err) = text(&o);
        assert!(o.status.success(), "{out}{err}");
        serde_json::from_str(&out).expect("JSON")
    };
    let mut v = info_json();
    let mut tries = 0;
    while let Err(e) = hugepages_match(&v) {
        tries += 1;
        assert!(tries < 10, "{e}");
        std::thread::sleep(Duration::from_millis(200));
        v = info_json();
    }
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["config"]["heartbeat_ms"], 123, "{v}");
    assert_eq!(v["config"]["idle"], "spin", "{v}");
    assert_eq!(
        v["features"].as_array().unwrap().len(),
        cfg!(feature = "dpdk") as usize + cfg!(feature = "verbs") as usize
    );
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let hugetlbfs = mounts.lines().filter(|l| l.contains(" hugetlbfs ")).count();
    assert_eq!(
        v["hugepages"]["mounts"].as_array().unwrap().len(),
        hugetlbfs
    );
    let (soft, _) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK).unwrap();
    let want = if soft == nix::sys::resource::RLIM_INFINITY {
        serde_json::Value::Null
    } else {
        serde_json::json!(soft)
    };
    assert_eq!(v["memlock"]["soft"], want);

    // A configuration that does not load: said, and the exit status says so.
    std::fs::write(&cfg, "no_such_key = 1\n").unwrap();
    let o = run_bounded(
        {
            let mut c = Command::new(WYVERN);
            c.args(["info", "-c", &cfg_s]);
            c
        },
        T,
    );
    let (out, err) = text(&o);
    assert!(!o.status.success(), "{out}{err}");
    assert!(out.contains("does not load"), "{out}");
    assert!(
        out.contains("# Hugepages"),
        "the rest is still shown: {out}"
    );
}

#[test]
fn info_lists_rdma_devices_with_their_ports_and_gids_as_sysfs_has_them() {
    if !cfg!(feature = "verbs") {
        eprintln!("skipped: built without the verbs feature");
        return;
    }
    let ib = Path::new("/sys/class/infiniband");
    let mut names: Vec<String> = std::fs::read_dir(ib)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let o = run_bounded(
        {
            let mut c = Command::new(WYVERN);
            c.args(["info", "--json"]);
            c
        },
        T,
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let devs = v["rdma"]["devices"].as_array().unwrap();
    let got: Vec<&str> = devs.iter().map(|d| d["name"].as_str().unwrap()).collect();
    assert_eq!(got, names, "{v}");
    if names.is_empty() {
        eprintln!("no RDMA device here (scripts/rxe-vm.sh has two): only the empty list checked");
        return;
    }
    let sysfs = |p: String| std::fs::read_to_string(ib.join(p)).map(|s| s.trim().to_string());
    for d in devs {
        let name = d["name"].as_str().unwrap();
        assert!(d["error"].is_null(), "{d}");
        let ports = d["ports"].as_array().unwrap();
        let in_sysfs = std::fs::read_dir(ib.join(name).join("ports"))
            .unwrap()
            .count();
        assert_eq!(ports.len(), in_sysfs, "{d}");
        for p in ports {
            let n = p["port"].as_u64().unwrap();
            // "4: ACTIVE"
            let state = sysfs(format!("{name}/ports/{n}/state")).unwrap();
            assert!(
                state.to_lowercase().ends_with(p["state"].as_str().unwrap()),
                "{state} vs {p}"
            );
            let gids = p["gids"].as_array().unwrap();
            assert!(!gids.is_empty(), "{p}");
            for g in gids {
                let i = g["index"].as_u64().unwrap();
                let want: std::net::Ipv6Addr = sysfs(format!("{name}/ports/{n}/gids/{i}"))
                    .unwrap()
                    .parse()
                    .unwrap();
                let shown: std::net::Ipv6Addr = g["gid"].as_str().unwrap().parse().unwrap();
                assert_eq!(shown, want, "{g}");
                if let Ok(t) = sysfs(format!("{name}/ports/{n}/gid_attrs/types/{i}")) {
                    assert_eq!(g["kind"].as_str(), Some(t.as_str()), "{g}");
                }
                if let Ok(nd) = sysfs(format!("{name}/ports/{n}/gid_attrs/ndevs/{i}")) {
                    assert_eq!(g["netdev"].as_str(), Some(nd.as_str()), "{g}");
                }
            }
        }
    }
    // In scripts/rxe-vm.sh: device i's RoCE v2 entry holds its IPv4 address.
    if let (Ok(devs), Ok(addrs), Ok(idx)) = (
        std::env::var("WYVERN_RXE_DEVS"),
        std::env::var("WYVERN_RXE_ADDRS"),
        std::env::var("WYVERN_RXE_GID_INDEX"),
    ) {
        let text = String::from_utf8_lossy(
            &run_bounded(
                {
                    let mut c = Command::new(WYVERN);
                    c.arg("info");
                    c
                },
                T,
            )
            .stdout,
        )
        .into_owned();
        for (dev, addr) in devs.split_whitespace().zip(addrs.split_whitespace()) {
            let line = format!("GID {idx:<3} ::ffff:{addr}");
            assert!(text.contains(&line), "no {line:?} for {dev} in:\n{text}");
            assert!(text.contains(&format!("{dev}:1  active  RoCE")), "{text}");
        }
        // With a node list naming the devices' addresses, info says which GID
        // the verbs transport would take for this node, and why.
        let addrs: Vec<&str> = addrs.split_whitespace().collect();
        let nodes: Vec<String> = addrs.iter().map(|a| format!("{a}:7470")).collect();
        let text = String::from_utf8_lossy(
            &run_bounded(
                {
                    let mut c = Command::new(WYVERN);
                    c.args(["info", "--node-id", "1", "--nodes", &nodes.join(",")]);
                    c
                },
                T,
            )
            .stdout,
        )
        .into_owned();
        let want = format!(
            "verbs would use GID {idx}: RoCE v2, carries this node's address {} from the node list",
            addrs[1]
        );
        assert!(text.contains(&want), "no {want:?} in:\n{text}");
    }
}

/// Whether `wyvern info --json`'s hugepages agree with sysfs and /proc/meminfo now.
fn hugepages_match(v: &serde_json::Value) -> Result<(), String> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let field = |name: &str| -> Option<u64> {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|r| r.trim().trim_end_matches("kB").trim().parse().unwrap())
    };
    let sizes = v["hugepages"]["sizes"].as_array().unwrap();
    let root = Path::new("/sys/kernel/mm/hugepages");
    let in_sysfs = std::fs::read_dir(root).map(|d| d.count()).unwrap_or(0);
    if sizes.len() != in_sysfs {
        return Err(format!("{in_sysfs} sizes in sysfs: {v}"));
    }
    if v["hugepages"]["default_kb"].as_u64() != field("Hugepagesize:") {
        return Err(format!("default size: {v}"));
    }
    for s in sizes {
        let kb = s["kb"].as_u64().unwrap();
        let d = root.join(format!("hugepages-{kb}kB"));
        let got = (s["total"].as_u64().unwrap(), s["free"].as_u64().unwrap());
        let now = (
            read_num(&d.join("nr_hugepages")),
            read_num(&d.join("free_hugepages")),
        );
        if got != now {
            return Err(format!("{kb} kB pages: sysfs {now:?}, info {s}"));
        }
        if Some(kb) == field("Hugepagesize:")
            && (Some(got.0), Some(got.1)) != (field("HugePages_Total:"), field("HugePages_Free:"))
        {
            return Err(format!("{kb} kB pages: /proc/meminfo {meminfo}, info {s}"));
        }
        let nodes = s["nodes"].as_array().unwrap();
        let node_total: u64 = nodes.iter().map(|n| n[1].as_u64().unwrap()).sum();
        if !nodes.is_empty() && node_total != got.0 {
            return Err(format!("per node: {s}"));
        }
    }
    Ok(())
}

/// The rows of an OSU-style table: every line not starting with '#', as numbers.
fn rows(out: &str) -> Vec<Vec<f64>> {
    out.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            l.split_whitespace()
                .take_while(|w| !w.starts_with('('))
                .map(|w| w.parse::<f64>().unwrap_or_else(|_| panic!("bad row {l:?}")))
                .collect()
        })
        .collect()
}

/// The responder on node `i`, once it says it is listening.
fn responder(c: &Cluster, i: usize) -> Proc {
    let sock = c.socket(i).display().to_string();
    let p = Proc::spawn(
        wyvern_on(c, i, &["ping", "--serve", "--socket", &sock]),
        "responder",
    );
    let l = p.line(Duration::from_secs(20));
    assert!(l.starts_with("wyvern responder on node"), "{l}");
    p
}

/// SIGTERM the responder and read its closing summary.
fn stop(p: Proc) -> String {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(p.pid()),
        nix::sys::signal::Signal::SIGTERM,
    );
    p.line(Duration::from_secs(20))
}

#[test]
fn ping_and_bw_measure_every_size_against_a_responder_and_check_the_payloads() {
    let c = Cluster::start(2, &[]);
    let srv = responder(&c, 1);
    let sock0 = c.socket(0).display().to_string();
    let sizes = [1u64, 64, 4096, 65536, 1 << 20];
    let sizes_arg = "1,64,4k,64k,1m";

    let o = run_bounded(
        wyvern_on(
            &c,
            0,
            &[
                "ping", "--to", "1", "--socket", &sock0, "--sizes", sizes_arg, "--iters", "100",
                "--time", "5",
            ],
        ),
        T,
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(out.contains("node 0 -> node 1 via"), "{out}");
    let r = rows(&out);
    assert_eq!(r.len(), sizes.len(), "{out}");
    for (row, size) in r.iter().zip(sizes) {
        assert_eq!(row.len(), 5, "size, iterations, p50, avg, p99: {out}");
        assert_eq!(row[0] as u64, size, "{out}");
        assert!(row[1] >= 1.0 && row[1] <= 100.0, "{out}");
        assert!(row[2] > 0.0 && row[3] > 0.0 && row[4] >= row[2], "{out}");
    }
    let pings: f64 = r.iter().map(|row| row[1]).sum();

    let o = run_bounded(
        wyvern_on(
            &c,
            0,
            &[
                "bw", "--to", "1", "--socket", &sock0, "--sizes", sizes_arg, "--iters", "256",
                "--window", "32", "--time", "5",
            ],
        ),
        T,
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    let r = rows(&out);
    assert_eq!(r.len(), sizes.len(), "{out}");
    for (row, size) in r.iter().zip(sizes) {
        assert_eq!(row.len(), 4, "size, messages, MB/s, msgs/s: {out}");
        assert_eq!(row[0] as u64, size, "{out}");
        assert!(row[1] >= 16.0, "{out}");
        assert!(row[2] > 0.0 && row[3] > 0.0, "{out}");
        // MB/s and msgs/s agree (to the table's rounding of both).
        let mb = row[3] * size as f64 / 1e6;
        assert!(
            (mb - row[2]).abs() <= 0.01 + 0.01 * mb + 0.5 * size as f64 / 1e6,
            "MB/s {} vs msgs/s {}: {out}",
            row[2],
            row[3]
        );
    }
    let bw_msgs: f64 = r.iter().map(|row| row[1]).sum();

    // --json: one object with every row.
    for kind in ["ping", "bw"] {
        let o = run_bounded(
            wyvern_on(
                &c,
                0,
                &[
                    kind, "--to", "1", "--socket", &sock0, "--sizes", "8,5000", "--iters", "64",
                    "--json",
                ],
            ),
            T,
        );
        let (out, err) = text(&o);
        assert!(o.status.success(), "{out}{err}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
        assert_eq!(v["ok"], true, "{v}");
        assert_eq!(
            (v["from"].as_u64(), v["to"].as_u64()),
            (Some(0), Some(1)),
            "{v}"
        );
        let rows = v["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 2, "{v}");
        assert_eq!(rows[1]["size"], 5000, "{v}");
        let key = if kind == "ping" { "p50_us" } else { "mb_s" };
        assert!(rows.iter().all(|r| r[key].as_f64().unwrap() > 0.0), "{v}");
    }

    // The responder checked every bw message (measured ones and one warm-up
    // window per size) and echoed every ping (and 10 warm-ups per size).
    let summary = stop(srv);
    let num = |before: &str| -> u64 {
        let head = summary.split(before).next().unwrap();
        head.split_whitespace().last().unwrap().parse().unwrap()
    };
    assert!(num(" pings echoed") as f64 >= pings, "{summary}");
    assert!(num(" bw messages checked") as f64 >= bw_msgs, "{summary}");
    assert_eq!(num(" damaged"), 0, "{summary}");
}

/// A responder whose agent goes away first still says what it did, and why
/// it stopped.
#[test]
fn a_responder_whose_agent_dies_says_so_with_its_summary() {
    let mut c = Cluster::start(2, &[]);
    let srv = responder(&c, 1);
    c.kill_agent(1);
    let summary = srv.line(Duration::from_secs(20));
    assert!(
        summary.starts_with("wyvern responder: stopped (") && summary.contains("pings echoed"),
        "{summary}"
    );
}

#[test]
fn ping_without_a_responder_names_the_node() {
    let c = Cluster::start(2, &[]);
    let sock0 = c.socket(0).display().to_string();
    let t0 = Instant::now();
    let o = run_bounded(
        wyvern_on(
            &c,
            0,
            &[
                "ping",
                "--to",
                "1",
                "--socket",
                &sock0,
                "--timeout-ms",
                "3000",
            ],
        ),
        T,
    );
    let (out, err) = text(&o);
    assert!(!o.status.success(), "{out}{err}");
    assert!(err.contains("no responder on node 1"), "{err}");
    assert!(err.contains("wyvern ping --serve"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    // A node outside the job.
    let o = run_bounded(
        wyvern_on(&c, 0, &["bw", "--to", "9", "--socket", &sock0]),
        T,
    );
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(err.contains("node 9 is not in the job"), "{err}");
}

/// The metrics address agent `i` logged.
fn metrics_addr(c: &Cluster, i: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = c.log(i);
        if let Some(u) = log
            .lines()
            .find_map(|l| l.split("Prometheus metrics on http://").nth(1))
        {
            return u.trim().trim_end_matches("/metrics").to_string();
        }
        assert!(Instant::now() < deadline, "no metrics address: {log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn http_get(addr: &str, req: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn metrics_follow_prometheus_conventions_and_serve_concurrent_scrapes() {
    if common::transport() == "dpdk" {
        eprintln!("skipped on dpdk: the metrics listener is inside the agents' namespaces");
        return;
    }
    let c = Cluster::start(2, &["--metrics", "127.0.0.1:0"]);
    // A client attached to node 0 (the responder), so client series exist.
    let srv = responder(&c, 0);
    let addr = metrics_addr(&c, 0);
    let resp = http_get(&addr, "GET /metrics?foo=1&bar HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(resp.starts_with("HTTP/1.1 200 OK"), "{resp}");
    assert!(resp.contains("text/plain; version=0.0.4"), "{resp}");
    let page = resp.split("\r\n\r\n").nth(1).unwrap();

    let mut help = std::collections::HashSet::new();
    let mut kind = std::collections::HashMap::new();
    let mut samples = 0;
    for l in page.lines() {
        if let Some(r) = l.strip_prefix("# HELP ") {
            let (name, text) = r.split_once(' ').unwrap();
            assert!(!text.trim().is_empty(), "{l}");
            assert!(help.insert(name.to_string()), "HELP twice: {l}");
        } else if let Some(r) = l.strip_prefix("# TYPE ") {
            let (name, k) = r.split_once(' ').unwrap();
            assert!(["counter", "gauge"].contains(&k), "{l}");
            assert!(
                kind.insert(name.to_string(), k.to_string()).is_none(),
                "{l}"
            );
        } else if !l.is_empty() {
            samples += 1;
            let name = l.split(['{', ' ']).next().unwrap();
            let k = kind
                .get(name)
                .unwrap_or_else(|| panic!("sample before or without its TYPE: {l}"));
            assert!(help.contains(name), "no HELP: {l}");
            assert_eq!(k == "counter", name.ends_with("_total"), "{l}");
            let v = l.rsplit(' ').next().unwrap();
            assert!(v.parse::<f64>().is_ok(), "{l}");
            assert!(l.contains("node=\"0\""), "every series has node: {l}");
            assert!(!l.contains("pid="), "no pid label: {l}");
        }
    }
    assert!(samples > 30, "{page}");
    for name in kind.keys() {
        assert!(name.starts_with("wyvern_"), "{name}");
        // A unit inside the name is last (before _total).
        for unit in ["bytes", "seconds"] {
            let base = name.trim_end_matches("_total");
            if base.contains(&format!("_{unit}_")) {
                panic!("{name}: the unit is not last");
            }
        }
    }
    assert!(
        page.contains(&format!(
            "wyvern_build_info{{node=\"0\",version=\"{}\",features=\"",
            env!("CARGO_PKG_VERSION")
        )),
        "{page}"
    );
    for name in [
        "wyvern_peer_rx_bytes_total{",
        "wyvern_peer_tx_messages_total{",
        "wyvern_uptime_seconds{",
        "wyvern_client_submitted_messages_total{node=\"0\",slot=",
    ] {
        assert!(page.contains(name), "no {name}: {page}");
    }
    assert!(page.contains("name=\"wyvern-serve\""), "{page}");

    // OpenMetrics when asked for.
    let om = http_get(
        &addr,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n",
    );
    assert!(om.contains("application/openmetrics-text"), "{om}");
    assert!(om.trim_end().ends_with("# EOF"), "{om}");

    // Two scrapes at once: the first has not finished its request when the
    // second comes; the second is answered all the same, then the first.
    let mut a = TcpStream::connect(&addr).unwrap();
    a.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    a.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let b = http_get(&addr, "GET /metrics?second HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(b.starts_with("HTTP/1.1 200 OK"), "{b}");
    a.write_all(b"\r\n").unwrap();
    let mut first = String::new();
    a.read_to_string(&mut first).unwrap();
    assert!(first.starts_with("HTTP/1.1 200 OK"), "{first}");
    assert!(first.contains("wyvern_up{node=\"0\"} 1"), "{first}");
    drop(srv);
}

/// `wyvern doctor` with `args`: (exit code, the JSON report's checks by name).
fn doctor(args: &[&str], prlimit_memlock: Option<u64>) -> (i32, Vec<serde_json::Value>) {
    let mut cmd = match prlimit_memlock {
        Some(b) => {
            let mut c = Command::new("prlimit");
            c.arg(format!("--memlock={b}")).arg(WYVERN);
            c
        }
        None => Command::new(WYVERN),
    };
    cmd.arg("doctor").arg("--json").args(args);
    let o = run_bounded(cmd, Duration::from_secs(30));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor {args:?}: {e}: {}",
            String::from_utf8_lossy(&o.stdout)
        )
    });
    (
        o.status.code().unwrap_or(-1),
        v["checks"].as_array().unwrap().clone(),
    )
}

fn verdict<'a>(checks: &'a [serde_json::Value], name: &str) -> (&'a str, &'a str) {
    let c = checks
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} check in {checks:?}"));
    (c["verdict"].as_str().unwrap(), c["found"].as_str().unwrap())
}

/// Each check of the preflight, provoked on this machine: what would stop an
/// agent or deny it what it asks for fails (exit 1) with the reason; advice
/// warns; a configuration the machine serves passes (exit 0).
#[test]
fn doctor_finds_each_problem_it_checks_and_passes_a_good_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("ok/agent.sock");
    let sock = sock.to_str().unwrap();
    // A small pool on normal pages, tcp, adaptive: nothing to fail here.
    let (code, c) = doctor(
        &["--socket", sock, "--no-hugepages", "--block-bytes", "16MiB"],
        None,
    );
    assert_eq!(code, 0, "{c:?}");
    assert_eq!(verdict(&c, "config").0, "ok");
    assert_eq!(verdict(&c, "socket").0, "ok");
    assert_eq!(
        verdict(&c, "hugepages").0,
        "warn",
        "hugepages off is advice"
    );

    // Hugepages: a pool no reservation here can hold.
    let (code, c) = doctor(&["--socket", sock, "--block-bytes", "200000MiB"], None);
    assert_eq!(code, 1);
    let (v, found) = verdict(&c, "hugepages");
    assert!(
        v == "fail" && found.contains("fall back to normal pages"),
        "{found}"
    );

    // Cores: one that is not there; spinning without cores warns only.
    let (code, c) = doctor(&["--socket", sock, "--cores", "4095"], None);
    assert_eq!(code, 1);
    assert!(verdict(&c, "cores").1.contains("4095"), "{c:?}");
    let (_, c) = doctor(&["--socket", sock, "--idle", "spin"], None);
    assert_eq!(verdict(&c, "cores").0, "warn");

    // The socket's directory open to everyone: the agent would refuse it.
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let s = open.join("a.sock");
    let (code, c) = doctor(&["--socket", s.to_str().unwrap()], None);
    assert_eq!(code, 1);
    let (v, found) = verdict(&c, "socket");
    assert!(
        v == "fail" && found.contains("writable by others"),
        "{found}"
    );

    // verbs: memlock below the pool it registers (and, outside the Soft-RoCE
    // VM, no RDMA device at all).
    let (code, c) = doctor(&["--socket", sock, "--transport", "verbs"], Some(65536));
    assert_eq!(code, 1);
    let (v, found) = verdict(&c, "memlock");
    assert!(v == "fail" && found.contains("64 KiB"), "{found}");
    let (v, _) = verdict(&c, "rdma");
    assert!(
        v == "fail" || std::env::var("WYVERN_RXE_VM").is_ok(),
        "{c:?}"
    );
    // A device that is not there.
    let (_, c) = doctor(
        &[
            "--socket",
            sock,
            "--transport",
            "verbs",
            "--verbs-device",
            "nosuch9",
        ],
        None,
    );
    assert_eq!(verdict(&c, "rdma").0, "fail");

    // dpdk: a virtual device whose driver is not installed.
    let (code, c) = doctor(
        &[
            "--socket",
            sock,
            "--transport",
            "dpdk",
            "--dpdk-eal-args",
            "--no-pci --vdev=net_nosuch0 --vdev=net_null0",
        ],
        None,
    );
    assert_eq!(code, 1);
    let (v, found) = verdict(&c, "dpdk");
    assert!(
        v == "fail" && found.contains("net_nosuch") && !found.contains("net_null"),
        "{found}"
    );

    // A configuration that does not load.
    let (code, c) = doctor(&["--socket", sock, "--nodes", "not an address"], None);
    assert_eq!(code, 1, "{c:?}");
    let (v, found) = verdict(&c, "config");
    assert!(v == "fail" && found.contains("not an address"), "{found}");
}

/// `HugePages_Free` of /proc/meminfo (pages of the default size).
fn hugepages_free() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Loud fallback: an agent that does not get what it asks for says so once
/// in its log, and for its life in `wyvern stat` (JSON and text) and the
/// metrics, each degraded path with its reason and its fix. Provoked here: a
/// pool larger than the free hugepages (normal pages instead), `--idle spin`
/// without `--cores`, two nodes without a job key. An agent that got what it
/// asked for lists nothing.
#[test]
fn every_degraded_path_is_in_stat_and_the_metrics_with_its_fix() {
    if common::transport() == "dpdk" {
        eprintln!("skipped on dpdk: the metrics listener is inside the agents' namespaces");
        return;
    }
    // More 2 MiB pages than are free: the pool falls back to normal pages.
    let block = format!("{}MiB", (hugepages_free() + 32) * 2);
    let c = Cluster::start(
        2,
        &[
            "--metrics",
            "127.0.0.1:0",
            "--idle",
            "spin",
            "--hugepages",
            "true",
            "--block-bytes",
            &block,
        ],
    );
    let s = c.stat(0);
    let listed: Vec<&serde_json::Value> = s["degraded"].as_array().unwrap().iter().collect();
    let what: Vec<&str> = listed.iter().map(|d| d["what"].as_str().unwrap()).collect();
    for want in ["hugepages", "spin", "peer_auth"] {
        assert!(what.contains(&want), "{want} not in {what:?}: {s}");
    }
    for d in &listed {
        assert!(
            !d["why"].as_str().unwrap().is_empty() && !d["fix"].as_str().unwrap().is_empty(),
            "{d}"
        );
    }
    let hp = listed.iter().find(|d| d["what"] == "hugepages").unwrap();
    assert!(
        hp["fix"].as_str().unwrap().contains("setup-hugepages.sh"),
        "{hp}"
    );
    assert!(
        s["backing"].as_str().unwrap().starts_with("normal pages"),
        "{s}"
    );
    // Logged once each, at warn.
    let log = c.log(0);
    assert_eq!(log.matches("DEGRADED (hugepages)").count(), 1, "{log}");
    // The text view.
    let o = Command::new(WYVERN)
        .args(["stat", "--interval", "0", "--socket"])
        .arg(c.socket(0))
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(
        out.contains("DEGRADED hugepages: ") && out.contains("DEGRADED peer_auth: "),
        "{out}"
    );
    // The metrics.
    let page = http_get(
        &metrics_addr(&c, 0),
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    for want in ["hugepages", "spin", "peer_auth"] {
        assert!(
            page.contains(&format!("wyvern_degraded{{node=\"0\",what=\"{want}\"}} 1")),
            "{want}: {page}"
        );
    }
    drop(c);

    // One node, a small pool that fits the free hugepages, adaptive: nothing
    // to say (when the machine has the pages at all).
    let c = Cluster::start(1, &["--block-bytes", "8MiB"]);
    let s = c.stat(0);
    if s["backing"].as_str().unwrap_or("").starts_with("hugepages") {
        assert_eq!(s["degraded"], serde_json::json!([]), "{s}");
    } else {
        eprintln!("no free hugepages on this machine: the quiet case is not checked");
    }
}
