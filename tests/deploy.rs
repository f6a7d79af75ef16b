//! The site deployment files in `deploy/` against the real binary: the
//! configuration loads, the systemd unit's `ExecStart`, the DaemonSet's
//! arguments and readiness probe are commands `wyvern` takes, and the image
//! installs the runtime packages `scripts/install-deps.sh` names. No image is
//! built and no Kubernetes object applied: no container runtime or cluster
//! runs on the test machines (docs/deploy.md says so).

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use common::WYVERN;

fn repo(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn read(p: &str) -> String {
    std::fs::read_to_string(repo(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// What makes a deployed command print its configuration for a one-node job
/// instead of running (the node list comes from `wyvern launch` on a site).
const PRINT_ONE_NODE: [&str; 5] = [
    "--node-id",
    "0",
    "--nodes",
    "127.0.0.1:7470",
    "--print-config",
];

/// `path` in the deployed layout -> the repository's file standing for it.
fn local(arg: &str, nodes: &std::path::Path) -> String {
    match arg {
        "/usr/local/bin/wyvern" => WYVERN.to_string(),
        "/etc/wyvern/agent.toml" | "/etc/wyvern/%i.toml" => {
            repo("deploy/agent.toml").display().to_string()
        }
        "/etc/wyvern/nodes" => nodes.display().to_string(),
        a => a.to_string(),
    }
}

/// The JSON-style flow sequence after `key: ` on a line of a YAML file.
fn yaml_list(yaml: &str, key: &str) -> Vec<String> {
    let line = yaml
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(&format!("{key}: [\"")))
        .unwrap_or_else(|| panic!("no `{key}: [...]` line"));
    serde_json::from_str(&line[key.len() + 2..])
        .unwrap_or_else(|e| panic!("{key}: not a flow sequence of strings: {e}: {line}"))
}

#[test]
fn the_site_configuration_loads_with_the_socket_where_clients_mount_it() {
    let o = Command::new(WYVERN)
        .args(["agent", "-c"])
        .arg(repo("deploy/agent.toml"))
        .args(PRINT_ONE_NODE)
        .env_remove("WYVERN_AGENT_CONFIG")
        .output()
        .unwrap();
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    for want in [
        "socket = \"/run/wyvern/agent.sock\"",
        "allow_gid = 7470",
        "connect = \"on-demand\"",
        "job_key_file = \"/etc/wyvern/job.key\"",
    ] {
        assert!(t.contains(want), "{want} not in:\n{t}");
    }
    // The client pod mounts that directory and points WYVERN_SOCKET into it,
    // in the group the agent allows.
    let pod = read("deploy/kubernetes/wyvern-client.yaml");
    assert!(
        pod.contains("{name: WYVERN_SOCKET, value: /run/wyvern/agent.sock}")
            && pod.contains("mountPath: /run/wyvern, readOnly: true")
            && pod.contains("supplementalGroups: [7470]"),
        "{pod}"
    );
}

#[test]
fn the_systemd_unit_starts_an_agent_the_binary_accepts() {
    let unit = read("deploy/wyvern-agent@.service");
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let nodes = std::path::Path::new("/nonexistent");
    let args: Vec<String> = exec.split_whitespace().map(|a| local(a, nodes)).collect();
    assert_eq!(args[0], WYVERN, "{exec}");
    let o = Command::new(&args[0])
        .args(&args[1..])
        .args(PRINT_ONE_NODE)
        .output()
        .unwrap();
    assert!(o.status.success(), "{exec}: {}", text(&o));
    // The user and group it runs as are the image's and the configuration's.
    assert!(unit.contains("\nUser=wyvern\n") && unit.contains("\nGroup=wyvern\n"));
    assert!(
        unit.contains("\nRuntimeDirectory=wyvern\n"),
        "systemd makes /run/wyvern"
    );
    let image = read("deploy/Containerfile");
    assert!(image.contains("--uid 7470 --gid 7470") && image.contains("USER 7470:7470"));
}

#[test]
fn the_daemonset_launches_this_node_by_its_host_name_and_probes_readiness() {
    let yaml = read("deploy/kubernetes/wyvern-agent.yaml");
    // This host is node 1 of a three-node list. Its name, in a UTS namespace
    // of its own so that it resolves wherever the test runs: `localhost`.
    let dir = tempfile::tempdir().unwrap();
    let nodes = dir.path().join("nodes");
    std::fs::write(
        &nodes,
        "# by node id\n127.0.0.2:7470\nlocalhost:7470\n127.0.0.3\n",
    )
    .unwrap();
    let args: Vec<String> = yaml_list(&yaml, "args")
        .iter()
        .map(|a| local(a, &nodes))
        .collect();
    assert_eq!(args[0], "launch", "{args:?}");
    let o = Command::new("unshare")
        .args([
            "--uts",
            "sh",
            "-c",
            "hostname localhost && exec \"$0\" \"$@\"",
        ])
        .arg(WYVERN)
        .args(&args)
        .arg("--dry-run")
        .env_remove("SLURM_JOB_NODELIST")
        .env_remove("SLURM_JOB_ID")
        .env_remove("WYVERN_AGENT_NODE_ID")
        .env_remove("WYVERN_AGENT_SOCKET")
        .output()
        .unwrap();
    let t = text(&o);
    assert!(o.status.success(), "{args:?}: {t}");
    // The configuration file's socket, not launch's default path: clients
    // mount that directory.
    assert!(
        t.contains("node_id 1\n")
            && t.contains("socket /run/wyvern/agent.sock\n")
            && t.lines().filter(|l| l.starts_with("node ")).count() == 3,
        "the DaemonSet's agent is node 1 of 3 with the socket clients mount: {t}"
    );

    // The probe is a `wyvern wait` the binary takes: against no agent it
    // fails as "not ready" (1), not as a usage error (2).
    let probe = yaml
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("command: [\"/usr/local/bin/wyvern\""))
        .map(|l| serde_json::from_str::<Vec<String>>(&l["command: ".len()..]).unwrap())
        .expect("the readiness probe's command");
    assert_eq!(probe[0], "/usr/local/bin/wyvern", "{probe:?}");
    let sock = dir.path().join("absent.sock");
    let mut cmd = Command::new(WYVERN);
    for a in &probe[1..] {
        cmd.arg(if a == "/run/wyvern/agent.sock" {
            sock.display().to_string()
        } else {
            a.clone()
        });
    }
    let o = cmd.env_remove("WYVERN_SOCKET").output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{probe:?}: {}", text(&o));
}

#[test]
fn the_image_installs_the_runtime_packages_and_runs_unprivileged() {
    let deps = read("scripts/install-deps.sh");
    let set = |name: &str| -> Vec<String> {
        let l = deps
            .lines()
            .find(|l| l.starts_with(&format!("{name}=(")))
            .unwrap_or_else(|| panic!("no {name} in install-deps.sh"));
        l[name.len() + 2..l.len() - 1]
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    let image = read("deploy/Containerfile");
    // The apt-get line of each stage (continued with backslashes).
    let stages: Vec<Vec<String>> = image
        .split("apt-get install -y --no-install-recommends")
        .skip(1)
        .map(|rest| {
            rest.split("&&")
                .next()
                .unwrap()
                .replace('\\', " ")
                .split_whitespace()
                .map(String::from)
                .collect()
        })
        .collect();
    assert_eq!(stages.len(), 2, "a build stage and the image");
    let mut runtime = set("runtime_pkgs");
    let mut got = stages[1].clone();
    runtime.sort();
    got.sort();
    assert_eq!(
        got, runtime,
        "the image installs install-deps.sh's runtime set, no more"
    );
    let build = set("build_pkgs");
    for p in &stages[0] {
        assert!(
            build.contains(p),
            "build stage installs {p}, not in build_pkgs {build:?}"
        );
    }
    assert!(image.contains("COPY deploy/agent.toml /etc/wyvern/agent.toml"));
    assert!(repo("deploy/agent.toml").exists());
    let user = image
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER line");
    assert!(
        !user.starts_with('0') && user != "root",
        "the agent's image runs as {user}"
    );
    assert!(image.contains("ENTRYPOINT [\"/usr/local/bin/wyvern\"]"));
}
