//! Tests of the agent's configuration (`config.rs`).
use super::*;

#[test]
fn a_partial_pool_table_takes_defaults_and_refuses_typos() {
    let c: AgentConfig = toml::from_str("[pool]\nmax_clients = 8\n").unwrap();
    assert_eq!(c.pool.max_clients, 8);
    let d = PoolParams::default();
    assert_eq!(
        (c.pool.sub_slots, c.pool.block_bytes),
        (d.sub_slots, d.block_bytes)
    );
    let e = toml::from_str::<AgentConfig>("[pool]\nblock_byte = 1\n").unwrap_err();
    assert!(e.to_string().contains("unknown field `block_byte`"), "{e}");
}

#[test]
fn job_key_from_file_then_environment() {
    use crate::wire::auth::JobKey;
    let hex = "ab".repeat(32);
    let env_key =
        |v: Option<String>| move |k: &str| (k == "WYVERN_JOB_KEY").then(|| v.clone()).flatten();
    let mut c = AgentConfig::default();
    assert_eq!(c.job_key_from(env_key(None)).unwrap(), None);
    assert_eq!(
        c.job_key_from(env_key(Some(hex.clone()))).unwrap(),
        Some(JobKey::from_bytes([0xab; 32]))
    );
    assert!(matches!(
        c.job_key_from(env_key(Some("not hex".into()))),
        Err(ConfigError::JobKey(_))
    ));
    // The file wins over the environment.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("k");
    std::fs::write(&p, [0x11u8; 32]).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    c.job_key_file = Some(p);
    assert_eq!(
        c.job_key_from(env_key(Some(hex))).unwrap(),
        Some(JobKey::from_bytes([0x11; 32]))
    );
    let t: AgentConfig = toml::from_str("job_key_file = \"/x/y\"").unwrap();
    assert_eq!(t.job_key_file.as_deref(), Some(Path::new("/x/y")));
}

#[test]
fn toml_round_trip_and_validation() {
    let text = r#"
        node_id = 1
        nodes = ["127.0.0.1:7000", "127.0.0.1:7001"]
        idle = "spin"
        [pool]
        max_clients = 4
        endpoints_per_client = 2
        sub_slots = 1024
        comp_slots = 64
        recv_slots = 1024
        block_bytes = 1048576
    "#;
    let mut c: AgentConfig = toml::from_str(text).unwrap();
    c.validate().unwrap();
    assert_eq!(c.addrs[1], "127.0.0.1:7001".parse().unwrap());
    assert_eq!(c.idle, IdlePolicy::Spin);
    assert_eq!(c.pool.max_clients, 4);
    c.node_id = 2;
    assert!(c.validate().is_err());
}

#[test]
fn node_names_are_resolved_and_bad_ones_named() {
    let mut c = AgentConfig {
        nodes: vec!["localhost:7000".into(), "127.0.0.1:7001".into()],
        ..AgentConfig::default()
    };
    c.validate().unwrap();
    assert_eq!(c.addrs[0].port(), 7000);
    assert!(c.addrs[0].ip().is_loopback());
    c.nodes.push("no-such-host.invalid:1".into());
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("node 2 (no-such-host.invalid:1)"), "{e}");
    c.nodes[2] = "missing-port".into();
    assert!(c.validate().is_err());
}

#[test]
fn dpdk_settings_are_checked() {
    let mut c = AgentConfig {
        nodes: vec!["127.0.0.1:0".into(), "127.0.0.1:0".into()],
        transport: TransportKind::Dpdk,
        ..AgentConfig::default()
    };
    let e = c.validate().unwrap_err().to_string();
    if cfg!(feature = "dpdk") {
        assert!(e.contains("dpdk_eal_args"), "{e}");
        c.dpdk_eal_args = vec!["--no-pci".into()];
        c.validate().unwrap();
        c.dpdk_peer_macs = vec!["".into()];
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("2 nodes"), "{e}");
        c.dpdk_peer_macs = vec!["".into(), "02:00:00:00:00:zz".into()];
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("dpdk_peer_macs[1]"), "{e}");
        c.dpdk_peer_macs[1] = "02:00:00:00:00:0a".into();
        c.validate().unwrap();
        assert_eq!(c.peer_macs(), vec![None, Some([2, 0, 0, 0, 0, 10])]);
    } else {
        assert!(e.contains("`dpdk` cargo feature"), "{e}");
    }
    let t: AgentConfig = toml::from_str(
        "transport = \"dpdk\"\ndpdk_eal_args = [\"--no-pci\"]\ndpdk_port = \"net_af_packet0\"",
    )
    .unwrap();
    assert_eq!(t.transport, TransportKind::Dpdk);
    assert_eq!(t.dpdk_port.as_deref(), Some("net_af_packet0"));
}

#[test]
fn peer_transports_are_checked() {
    let mut c = AgentConfig {
        nodes: vec!["127.0.0.1:0".into(), "127.0.0.1:0".into()],
        peer_transports: vec!["".into(), "udp".into()],
        ..AgentConfig::default()
    };
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("needs a hybrid agent"), "{e}");
    c.transports = vec![TransportKind::Udp, TransportKind::Tcp];
    c.validate().unwrap();
    assert_eq!(
        c.forced_transports().unwrap(),
        vec![None, Some(TransportKind::Udp)]
    );
    c.peer_transports = vec!["".into()];
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("1 entries for 2 nodes"), "{e}");
    c.peer_transports = vec!["".into(), "smoke".into()];
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("peer_transports[1]"), "{e}");
    c.peer_transports = vec!["".into(), "verbs".into()];
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("runs only"), "{e}");
    assert_eq!(c.hybrid_fallback(), Duration::from_millis(1500));
    c.hybrid_fallback_ms = 700;
    assert_eq!(c.hybrid_fallback(), Duration::from_millis(700));
}

#[test]
fn unknown_keys_are_refused() {
    assert!(toml::from_str::<AgentConfig>("nodez = []").is_err());
}

#[test]
fn eager_larger_than_rings_is_refused() {
    let mut c = AgentConfig::default();
    c.pool.recv_slots = 16;
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("eager_max"), "{e}");
}
