//! Unit tests of the metrics page (`metrics.rs`).

use super::*;
use crate::agent::stats::{ClientSnapshot, PeerCounters, PeerSnapshot};

#[test]
fn every_peer_counter_has_a_metric_name() {
    let serde_json::Value::Object(m) = serde_json::to_value(PeerCounters::default()).unwrap()
    else {
        panic!("counters serialise as an object")
    };
    for k in m.keys() {
        assert!(
            PEER_COUNTERS.iter().any(|c| c.0 == k),
            "peer counter {k} has no row in PEER_COUNTERS"
        );
    }
    assert_eq!(
        m.len(),
        PEER_COUNTERS.len(),
        "a row for a counter that is gone"
    );
}

#[test]
fn transport_counters_get_their_unit_last() {
    let n = |k: &str| {
        let (name, unit) = transport_metric_name(k);
        full_name(&name, unit.as_ref())
    };
    assert_eq!(n("packets_resent_timeout"), "resent_timeout_packets");
    assert_eq!(n("frames_tx_full"), "tx_full_frames");
    assert_eq!(n("tx_bytes_copied"), "tx_copied_bytes");
    assert_eq!(n("verbs_send_bytes"), "verbs_send_bytes");
    assert_eq!(n("packets_tx"), "tx_packets");
    assert_eq!(n("tcp_pending_refused"), "tcp_pending_refused");
}

fn snapshot() -> Snapshot {
    Snapshot {
        node: 3,
        nodes: 4,
        backing: "hugepages (2 MiB)".into(),
        pool_bytes: 1 << 30,
        blocks_free: 100,
        blocks_total: 200,
        idle: "spin".into(),
        uptime_s: 1.5,
        rounds: 10,
        sleeps: 2,
        preempted: 0,
        busy_rounds: [("clients".to_string(), 4)].into_iter().collect(),
        links: [("up".to_string(), 1)].into_iter().collect(),
        local_msgs: 5,
        clients_evicted: 0,
        clients_departed_reclaimed: 0,
        pool_pages_damaged: 0,
        parked_msgs: 0,
        parked_bytes: 0,
        peers: vec![PeerSnapshot {
            node: 1,
            addr: "127.0.0.1:1".into(),
            transport: "udp".into(),
            state: "up".into(),
            counters: PeerCounters {
                bytes_rx: 77,
                ..Default::default()
            },
            aggregation: 1.0,
            queued_bytes: 0,
            unacked_bytes: 9,
            rx_buffer_bytes: 0,
            rx_reassembly_bytes: 0,
            rx_delivery_bytes: 0,
            packet_bytes: 1472,
        }],
        transport: [
            ("udp.packets_resent_timeout".to_string(), 4u64),
            ("udp.frames_tx_queued".to_string(), 2u64),
            ("dpdk.frames_rx_largest".to_string(), 1514u64),
            ("dpdk.rails".to_string(), 2u64),
        ]
        .into_iter()
        .collect(),
        transport_info: Default::default(),
        clients: vec![ClientSnapshot {
            slot: 2,
            pid: 4242,
            name: "a \"quoted\" name".into(),
            endpoints: vec![1, 2],
            submitted: 8,
            delivered: 6,
            errors: 0,
            sub_ring_used: 0,
            blocks: 1,
        }],
        degraded: vec![super::super::stats::Degradation {
            what: "hugepages".into(),
            why: "no free hugepages".into(),
            fix: "reserve some".into(),
        }],
    }
}

#[test]
fn the_page_follows_the_conventions() {
    let page = render(&snapshot());
    assert!(
        page.contains("wyvern_peer_rx_bytes_total{node=\"3\",peer=\"1\",transport=\"udp\"} 77"),
        "{page}"
    );
    assert!(
        page.contains("wyvern_build_info{node=\"3\",version=\""),
        "{page}"
    );
    assert!(
        page.contains(
            "wyvern_transport_resent_timeout_packets_total{node=\"3\",backend=\"udp\"} 4"
        ),
        "{page}"
    );
    assert!(
        page.contains("# TYPE wyvern_transport_tx_queued_frames gauge"),
        "{page}"
    );
    // Levels are gauges: the largest frame seen, the rails, a link's packet.
    for (name, v) in [
        ("wyvern_transport_rx_largest_frames", "1514"),
        ("wyvern_transport_rails", "2"),
    ] {
        assert!(page.contains(&format!("# TYPE {name} gauge")), "{page}");
        assert!(
            page.contains(&format!("{name}{{node=\"3\",backend=\"dpdk\"}} {v}")),
            "{page}"
        );
    }
    assert!(
        page.contains("wyvern_peer_packet_bytes{node=\"3\",peer=\"1\",transport=\"udp\"} 1472"),
        "{page}"
    );
    assert!(
        page.contains(
            "wyvern_client_blocks{node=\"3\",slot=\"2\",name=\"a \\\"quoted\\\" name\"} 1"
        ),
        "{page}"
    );
    assert!(
        page.contains("wyvern_degraded{node=\"3\",what=\"hugepages\"} 1"),
        "{page}"
    );
    assert!(!page.contains("pid"), "{page}");
    let mut help = std::collections::HashSet::new();
    let mut kind = std::collections::HashMap::new();
    for l in page.lines() {
        if let Some(r) = l.strip_prefix("# HELP ") {
            help.insert(r.split(' ').next().unwrap().to_string());
        } else if let Some(r) = l.strip_prefix("# TYPE ") {
            let mut w = r.split(' ');
            kind.insert(w.next().unwrap().to_string(), w.next().unwrap().to_string());
        }
    }
    for (name, k) in &kind {
        assert!(help.contains(name), "{name} has no HELP");
        assert!(name.starts_with("wyvern_"), "{name}");
        assert_eq!(k == "counter", name.ends_with("_total"), "{name} is a {k}");
    }
    let om = render_openmetrics(&snapshot());
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(om.contains("# UNIT wyvern_peer_rx_bytes bytes"), "{om}");
}
