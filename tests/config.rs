//! The agent's configuration: every key settable by a flag, a `WYVERN_AGENT_*`
//! variable and the TOML file, with flag > environment > file > default, sizes
//! with units in all three, and a bad value refused with the key's name.
//!
//! These run the real `wyvern agent --print-config` (the same loading and
//! checks an agent does at start) with a clean environment.

use std::path::Path;
use std::process::{Command, Output};

use clap::Args;
use wyvern::config::{config_keys, env_of, flag_of, AgentArgs, SIZE_KEYS};

const WYVERN: &str = env!("CARGO_BIN_EXE_wyvern");

/// A key under test: a TOML literal for the file, a string for the variable, a
/// string for the flag, and what `--print-config` must then show (TOML
/// literals), for file, file + env, file + env + flag.
struct Sample {
    key: &'static str,
    file: &'static str,
    env: &'static str,
    flag: &'static str,
    want: [&'static str; 3],
}

const fn s(
    key: &'static str,
    file: &'static str,
    env: &'static str,
    flag: &'static str,
    want: [&'static str; 3],
) -> Sample {
    Sample {
        key,
        file,
        env,
        flag,
        want,
    }
}

/// Four nodes, so that node ids 1..=3 are valid.
const NODES: &str =
    r#"nodes = ["127.0.0.1:7000", "127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]"#;

const MACS_A: &str = r#"["", "02:00:00:00:00:01", "", ""]"#;

/// One sample per key; a key of the configuration without one fails
/// `every_key_is_settable_three_ways_and_the_first_wins`.
fn samples() -> Vec<Sample> {
    vec![
        s("node_id", "1", "2", "3", ["1", "2", "3"]),
        s(
            "nodes",
            r#"["127.0.0.1:7100", "127.0.0.1:7101"]"#,
            "127.0.0.1:7200,127.0.0.1:7201",
            "127.0.0.1:7300,127.0.0.1:7301,127.0.0.1:7302",
            [
                r#"["127.0.0.1:7100", "127.0.0.1:7101"]"#,
                r#"["127.0.0.1:7200", "127.0.0.1:7201"]"#,
                r#"["127.0.0.1:7300", "127.0.0.1:7301", "127.0.0.1:7302"]"#,
            ],
        ),
        s(
            "socket",
            r#""/tmp/wyv-file.sock""#,
            "/tmp/wyv-env.sock",
            "/tmp/wyv-flag.sock",
            [
                r#""/tmp/wyv-file.sock""#,
                r#""/tmp/wyv-env.sock""#,
                r#""/tmp/wyv-flag.sock""#,
            ],
        ),
        s(
            "transport",
            r#""udp""#,
            "tcp",
            "udp",
            [r#""udp""#, r#""tcp""#, r#""udp""#],
        ),
        s(
            "transports",
            r#"["udp", "tcp"]"#,
            "tcp,udp",
            "udp",
            [r#"["udp", "tcp"]"#, r#"["tcp", "udp"]"#, r#"["udp"]"#],
        ),
        s(
            "peer_transports",
            r#"["", "udp", "", ""]"#,
            ",tcp,,",
            "udp,,,",
            [
                r#"["", "udp", "", ""]"#,
                r#"["", "tcp", "", ""]"#,
                r#"["udp", "", "", ""]"#,
            ],
        ),
        s(
            "hybrid_fallback_ms",
            "100",
            "200",
            "300",
            ["100", "200", "300"],
        ),
        s(
            "hybrid_retry_ms",
            "1000",
            "2000",
            "3000",
            ["1000", "2000", "3000"],
        ),
        s(
            "metrics",
            r#""127.0.0.1:9001""#,
            "127.0.0.1:9002",
            "127.0.0.1:9003",
            [
                r#""127.0.0.1:9001""#,
                r#""127.0.0.1:9002""#,
                r#""127.0.0.1:9003""#,
            ],
        ),
        s("job", r#""a""#, "b", "c", [r#""a""#, r#""b""#, r#""c""#]),
        s(
            "job_key_file",
            r#""/k/file""#,
            "/k/env",
            "/k/flag",
            [r#""/k/file""#, r#""/k/env""#, r#""/k/flag""#],
        ),
        s(
            "packet_bytes",
            "1400",
            "9000",
            "8KiB",
            ["1400", "9000", "8192"],
        ),
        s(
            "dpdk_eal_args",
            r#"["--no-pci"]"#,
            "--no-pci -m 64",
            "--no-huge",
            [
                r#"["--no-pci"]"#,
                r#"["--no-pci", "-m", "64"]"#,
                r#"["--no-huge"]"#,
            ],
        ),
        s(
            "dpdk_port",
            r#""net_af_packet0""#,
            "1",
            "net_memif0,net_memif1",
            [
                r#""net_af_packet0""#,
                r#""1""#,
                r#""net_memif0,net_memif1""#,
            ],
        ),
        s("dpdk_mtu", "1500", "9000", "4000", ["1500", "9000", "4000"]),
        s(
            "dpdk_extbuf",
            r#""off""#,
            "auto",
            "off",
            [r#""off""#, r#""auto""#, r#""off""#],
        ),
        s(
            "dpdk_peer_macs",
            MACS_A,
            ",,02:00:00:00:00:02,",
            "02:00:00:00:00:03,,,",
            [
                MACS_A,
                r#"["", "", "02:00:00:00:00:02", ""]"#,
                r#"["02:00:00:00:00:03", "", "", ""]"#,
            ],
        ),
        s(
            "verbs_device",
            r#""rxe0""#,
            "rxe1",
            "mlx5_0:1",
            [r#""rxe0""#, r#""rxe1""#, r#""mlx5_0:1""#],
        ),
        s("verbs_gid_index", "1", "2", "3", ["1", "2", "3"]),
        s(
            "verbs_port_offset",
            "100",
            "200",
            "300",
            ["100", "200", "300"],
        ),
        s(
            "verbs_fabric",
            r#""a""#,
            "b",
            "c",
            [r#""a""#, r#""b""#, r#""c""#],
        ),
        s("cores", "[0]", "1", "0,1", ["[0]", "[1]", "[0, 1]"]),
        s(
            "idle",
            r#""spin""#,
            "adaptive",
            "spin",
            [r#""spin""#, r#""adaptive""#, r#""spin""#],
        ),
        s(
            "congestion",
            r#""aimd""#,
            "rate",
            "aimd",
            [r#""aimd""#, r#""rate""#, r#""aimd""#],
        ),
        s(
            "connect",
            r#""all""#,
            "on-demand",
            "all",
            [r#""all""#, r#""on-demand""#, r#""all""#],
        ),
        s("spin_us", "10", "20", "30", ["10", "20", "30"]),
        s(
            "hugepages",
            "false",
            "true",
            "false",
            ["false", "true", "false"],
        ),
        s("pool.max_clients", "8", "16", "4", ["8", "16", "4"]),
        s("pool.endpoints_per_client", "2", "3", "5", ["2", "3", "5"]),
        s(
            "pool.sub_slots",
            "8192",
            "16384",
            "32768",
            ["8192", "16384", "32768"],
        ),
        s(
            "pool.comp_slots",
            "256",
            "512",
            "2048",
            ["256", "512", "2048"],
        ),
        s(
            "pool.recv_slots",
            "8192",
            "16384",
            "32768",
            ["8192", "16384", "32768"],
        ),
        s(
            "pool.block_bytes",
            r#""64MiB""#,
            "128 MiB",
            "268435456",
            ["67108864", "134217728", "268435456"],
        ),
        s(
            "frame_bytes",
            "32768",
            "128KiB",
            "256 KiB",
            ["32768", "131072", "262144"],
        ),
        s(
            "eager_max",
            r#""1KiB""#,
            "2048",
            "512B",
            ["1024", "2048", "512"],
        ),
        s(
            "chunk_bytes",
            r#""64 KiB""#,
            "128k",
            "1M",
            ["65536", "131072", "1048576"],
        ),
        s("flush_delay_us", "5", "10", "20", ["5", "10", "20"]),
        s("heartbeat_ms", "100", "150", "250", ["100", "150", "250"]),
        s(
            "peer_timeout_ms",
            "1000",
            "2000",
            "4000",
            ["1000", "2000", "4000"],
        ),
        s(
            "connect_timeout_ms",
            "1000",
            "2000",
            "3000",
            ["1000", "2000", "3000"],
        ),
        s("link_idle_ms", "0", "500", "120000", ["0", "500", "120000"]),
        s(
            "peer_queue_bytes",
            r#""1MiB""#,
            "2MiB",
            "4MB",
            ["1048576", "2097152", "4000000"],
        ),
        s(
            "overflow_bytes",
            r#""1MiB""#,
            "2MiB",
            "0",
            ["1048576", "2097152", "0"],
        ),
        s(
            "client_block_quota",
            r#""16MiB""#,
            "32MiB",
            "64MiB",
            ["16777216", "33554432", "67108864"],
        ),
        s(
            "unknown_ep_grace_ms",
            "0",
            "100",
            "200",
            ["0", "100", "200"],
        ),
        s("allow_gid", "10", "20", "30", ["10", "20", "30"]),
        s("max_client_errors", "1", "2", "3", ["1", "2", "3"]),
        s(
            "peer_rx_bytes",
            r#""1MiB""#,
            "2G",
            "3k",
            ["1048576", "2147483648", "3072"],
        ),
    ]
}

/// `wyvern agent ARGS --print-config` with no `WYVERN_AGENT_*` variable but `env`.
fn agent(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(WYVERN);
    c.arg("agent").args(args).arg("--print-config");
    for (k, _) in std::env::vars() {
        if k.starts_with("WYVERN_AGENT_") {
            c.env_remove(k);
        }
    }
    c.envs(env.iter().copied());
    c.output().expect("run wyvern agent")
}

/// The printed configuration's value of `key` (dotted for `[pool]`), or the
/// command's error.
fn printed(out: &Output, key: &str) -> Result<Option<toml::Value>, String> {
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let t: toml::Table = String::from_utf8_lossy(&out.stdout)
        .parse()
        .expect("--print-config prints TOML");
    let mut v = Some(toml::Value::Table(t));
    for part in key.split('.') {
        v = v.and_then(|v| v.get(part).cloned());
    }
    Ok(v)
}

fn literal(text: &str) -> toml::Value {
    let t: toml::Table = format!("v = {text}").parse().expect("a TOML literal");
    t["v"].clone()
}

/// A config file with the context a key needs (four nodes; a hybrid agent for
/// `peer_transports`) and, if given, the key's value.
fn file_with(dir: &Path, key: &str, value: Option<&str>) -> std::path::PathBuf {
    let mut top = Vec::new();
    if key != "nodes" {
        top.push(NODES.to_string());
    }
    if key == "peer_transports" {
        top.push(r#"transports = ["udp", "tcp"]"#.to_string());
    }
    let mut pool = Vec::new();
    if let Some(v) = value {
        match key.strip_prefix("pool.") {
            Some(k) => pool.push(format!("{k} = {v}")),
            None => top.push(format!("{key} = {v}")),
        }
    }
    let mut text = top.join("\n") + "\n";
    if !pool.is_empty() {
        text += &format!("[pool]\n{}\n", pool.join("\n"));
    }
    let tag = if value.is_some() { "set" } else { "base" };
    let p = dir.join(format!("{}-{tag}.toml", key.replace('.', "_")));
    std::fs::write(&p, text).expect("write config");
    p
}

#[test]
fn every_key_has_a_flag_a_variable_and_a_row_in_the_user_guide() {
    let cmd = AgentArgs::augment_args(clap::Command::new("agent"));
    let guide =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/user-guide.md"))
            .expect("docs/user-guide.md");
    let keys = config_keys();
    assert!(keys.len() >= 40, "too few keys found: {keys:?}");
    let mut missing = Vec::new();
    for key in &keys {
        let (flag, env) = (flag_of(key), env_of(key));
        match cmd.get_arguments().find(|a| a.get_long() == Some(&flag)) {
            None => missing.push(format!("{key}: no flag --{flag}")),
            Some(a) => {
                let got = a.get_env().map(|e| e.to_string_lossy().into_owned());
                if got.as_deref() != Some(env.as_str()) {
                    missing.push(format!("{key}: --{flag} reads {got:?}, not {env}"));
                }
                if SIZE_KEYS.contains(&key.as_str())
                    && a.get_value_names().map(|v| v[0].as_str()) != Some("SIZE")
                {
                    missing.push(format!("{key}: --{flag} does not take a SIZE"));
                }
            }
        }
        let row = format!("| `{key}` | `--{flag}`");
        if !guide
            .lines()
            .any(|l| l.starts_with(&row) && l.contains(&format!("`{env}`")))
        {
            missing.push(format!(
                "{key}: no row `{row} ... {env}` in docs/user-guide.md"
            ));
        }
    }
    // Sizes are the keys in bytes, and only they.
    for key in &keys {
        let bytes = key.ends_with("_bytes") || key.ends_with("eager_max") || key.ends_with("quota");
        assert_eq!(
            bytes,
            SIZE_KEYS.contains(&key.as_str()),
            "{key}: a size key must be in SIZE_KEYS (and parse sizes), and only a size key"
        );
    }
    for k in SIZE_KEYS {
        assert!(
            keys.iter().any(|x| x == k),
            "SIZE_KEYS names {k}, not a key"
        );
    }
    assert!(
        missing.is_empty(),
        "keys without their flag, variable or docs:\n{}",
        missing.join("\n")
    );
}

#[test]
fn every_key_is_settable_three_ways_and_the_first_wins() {
    let dir = tempfile::tempdir().unwrap();
    let samples = samples();
    let keys = config_keys();
    for key in &keys {
        assert!(
            samples.iter().any(|s| s.key == key),
            "{key}: no sample in tests/config.rs (add one, with its flag and variable)"
        );
    }
    let default = toml::Value::try_from(wyvern::agent::AgentConfig::default()).unwrap();
    for s in &samples {
        assert!(
            keys.iter().any(|k| k == s.key),
            "sample for {}, not a key",
            s.key
        );
        let (flag, env) = (format!("--{}", flag_of(s.key)), env_of(s.key));
        let base = file_with(dir.path(), s.key, None);
        let file = file_with(dir.path(), s.key, Some(s.file));
        let base_s = base.to_str().unwrap();
        let file_s = file.to_str().unwrap();
        let flag_arg = format!("{flag}={}", s.flag);
        let runs: [(&str, Output); 4] = [
            ("default", agent(&["-c", base_s], &[])),
            ("file", agent(&["-c", file_s], &[])),
            ("file + env", agent(&["-c", file_s], &[(&env, s.env)])),
            (
                "file + env + flag",
                agent(&["-c", file_s, &flag_arg], &[(&env, s.env)]),
            ),
        ];
        let mut want_default = Some(&default);
        for part in s.key.split('.') {
            want_default = want_default.and_then(|v| v.get(part));
        }
        let mut prev: Option<toml::Value> = None;
        for (i, (what, out)) in runs.iter().enumerate() {
            let got = printed(out, s.key).unwrap_or_else(|e| panic!("{}: {what}: {e}", s.key));
            let want = match i {
                // validate() fills in a one-node list.
                0 if s.key == "nodes" => Some(literal(r#"["127.0.0.1:0"]"#)),
                0 => want_default.cloned(),
                _ => Some(literal(s.want[i - 1])),
            };
            assert_eq!(got, want, "{}: {what}", s.key);
            if i > 0 {
                assert_ne!(got, prev, "{}: {what} must change the value", s.key);
            }
            prev = got;
        }
        // The variable alone (no file) works too, and the flag alone.
        let need_nodes = ["node_id", "peer_transports", "dpdk_peer_macs"].contains(&s.key);
        let hybrid = s.key == "peer_transports";
        let mut extra: Vec<String> = Vec::new();
        if need_nodes {
            extra.push("--nodes=127.0.0.1:1,127.0.0.1:2,127.0.0.1:3,127.0.0.1:4".into());
        }
        if hybrid {
            extra.push("--transports=udp,tcp".into());
        }
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let out = agent(&extra, &[(&env, s.env)]);
        let got = printed(&out, s.key).unwrap_or_else(|e| panic!("{}: env alone: {e}", s.key));
        assert_eq!(got, Some(literal(s.want[1])), "{}: env alone", s.key);
        let mut args = extra.clone();
        args.push(&flag_arg);
        let out = agent(&args, &[]);
        let got = printed(&out, s.key).unwrap_or_else(|e| panic!("{}: flag alone: {e}", s.key));
        assert_eq!(got, Some(literal(s.want[2])), "{}: flag alone", s.key);
    }
}

#[test]
fn a_bad_value_is_refused_naming_the_key_in_each_of_the_three_ways() {
    let dir = tempfile::tempdir().unwrap();
    for key in SIZE_KEYS {
        let (flag, env) = (format!("--{}", flag_of(key)), env_of(key));
        let cases = [
            ("flag", agent(&[&format!("{flag}=12XB")], &[])),
            ("env", agent(&[], &[(&env, "lots")])),
            (
                "file",
                agent(
                    &[
                        "-c",
                        file_with(dir.path(), key, Some(r#""1.5GiB""#))
                            .to_str()
                            .unwrap(),
                    ],
                    &[],
                ),
            ),
        ];
        for (how, out) in cases {
            assert!(!out.status.success(), "{key} by {how}: accepted");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains(key),
                "{key} by {how}: the error does not name it:\n{err}"
            );
            assert!(
                err.contains("64KiB") && err.contains("MiB"),
                "{key} by {how}: the error does not say the accepted forms:\n{err}"
            );
            if how != "file" {
                assert!(
                    err.contains(&flag) && err.contains(&env),
                    "{key} by {how}:\n{err}"
                );
            }
        }
    }
    // Integers too (by flag and by variable).
    let mut ints = 0;
    for s in samples() {
        if SIZE_KEYS.contains(&s.key) || s.flag.parse::<u64>().is_err() {
            continue;
        }
        ints += 1;
        let (flag, env) = (format!("--{}", flag_of(s.key)), env_of(s.key));
        for (how, out) in [
            ("flag", agent(&[&format!("{flag}=many")], &[])),
            ("env", agent(&[], &[(&env, "-1x")])),
        ] {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{} by {how}: accepted", s.key);
            assert!(
                err.contains(&format!("{} ({flag} or {env})", s.key)),
                "{} by {how}: the error does not name it:\n{err}",
                s.key
            );
        }
    }
    assert!(ints >= 18, "only {ints} integer keys");
    // A negative size in the file.
    let out = agent(
        &[
            "-c",
            file_with(dir.path(), "eager_max", Some("-4"))
                .to_str()
                .unwrap(),
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("eager_max: -4 is negative"),
        "{err}"
    );
}

#[test]
fn old_spellings_still_work_and_warn() {
    let out = agent(
        &[
            "--block-mib",
            "16",
            "--overflow-mib",
            "8",
            "--client-quota-mib",
            "4",
            "--dpdk-eal",
            "--no-pci -m 64",
        ],
        &[("RUST_LOG", "warn")],
    );
    assert_eq!(
        printed(&out, "pool.block_bytes"),
        Ok(Some(literal("16777216")))
    );
    assert_eq!(
        printed(&out, "overflow_bytes"),
        Ok(Some(literal("8388608")))
    );
    assert_eq!(
        printed(&out, "client_block_quota"),
        Ok(Some(literal("4194304")))
    );
    assert_eq!(
        printed(&out, "dpdk_eal_args"),
        Ok(Some(literal(r#"["--no-pci", "-m", "64"]"#)))
    );
    let err = String::from_utf8_lossy(&out.stderr);
    for (old, new) in [
        ("--block-mib 16", "--block-bytes 16MiB"),
        ("--overflow-mib 8", "--overflow-bytes 8MiB"),
        ("--client-quota-mib 4", "--client-block-quota 4MiB"),
    ] {
        assert_eq!(err.matches(old).count(), 1, "one warning for {old}:\n{err}");
        assert!(err.contains(new), "the warning says {new}:\n{err}");
    }
    // A deprecated flag is still a flag: it wins over the variable.
    let out = agent(
        &["--block-mib", "16"],
        &[("WYVERN_AGENT_BLOCK_BYTES", "1GiB")],
    );
    assert_eq!(
        printed(&out, "pool.block_bytes"),
        Ok(Some(literal("16777216")))
    );
    // --no-hugepages is --hugepages false, and wins over the variable.
    let out = agent(&["--no-hugepages"], &[("WYVERN_AGENT_HUGEPAGES", "yes")]);
    assert_eq!(printed(&out, "hugepages"), Ok(Some(literal("false"))));
    // The config file by variable.
    let dir = tempfile::tempdir().unwrap();
    let f = file_with(dir.path(), "spin_us", Some("77"));
    let out = agent(&[], &[("WYVERN_AGENT_CONFIG", f.to_str().unwrap())]);
    assert_eq!(printed(&out, "spin_us"), Ok(Some(literal("77"))));
}

#[test]
fn the_printed_configuration_loads_back_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let out = agent(
        &[
            "--nodes=127.0.0.1:1,127.0.0.1:2",
            "--block-bytes=96MiB",
            "--eager-max=2KiB",
        ],
        &[("WYVERN_AGENT_PEER_QUEUE_BYTES", "3MiB")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = dir.path().join("printed.toml");
    std::fs::write(&p, &out.stdout).unwrap();
    let again = agent(&["-c", p.to_str().unwrap()], &[]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&again.stdout)
    );
}
