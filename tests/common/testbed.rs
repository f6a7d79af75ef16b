//! Nodes as network namespaces from `scripts/testbed.sh`, for the dpdk transport's tests
//! (and the end-to-end suite with `WYVERN_TEST_TRANSPORT=dpdk`).

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use super::Cluster;

/// Namespaces made by this test process so far (each testbed gets its own prefix).
static MADE: AtomicU32 = AtomicU32::new(0);

/// N namespaces from `scripts/testbed.sh up N`, removed (`down`) when dropped.
pub struct Testbed {
    pub prefix: String,
    pub n: usize,
    /// The veths' MTU (`TESTBED_MTU`); above 1500 the agents' `net_af_packet` gets ring
    /// frames big enough for it (`framesz`), but no `--dpdk-mtu` (the test gives that).
    pub mtu: u32,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/testbed.sh")
}

impl Testbed {
    /// `None` (after a loud message) where namespaces cannot be made.
    pub fn up(test: &str, n: usize) -> Option<Testbed> {
        Testbed::up_with(test, n, false)
    }

    /// With `middle`: the two nodes' veths end in a third namespace (`<prefix>mid`,
    /// interfaces l0 and l1), where nothing passes unless a forwarder runs.
    pub fn up_with(test: &str, n: usize, middle: bool) -> Option<Testbed> {
        Testbed::up_full(test, n, middle, 1500)
    }

    /// With the veths' MTU set to `mtu` (jumbo frames).
    pub fn up_mtu(test: &str, n: usize, mtu: u32) -> Option<Testbed> {
        Testbed::up_full(test, n, false, mtu)
    }

    fn up_full(test: &str, n: usize, middle: bool, mtu: u32) -> Option<Testbed> {
        let k = MADE.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("w{}x{k}", std::process::id() % 100_000);
        // Skip only where namespaces cannot be made at all; any other failure of the
        // script is a failure of the test.
        let probe = format!("{prefix}probe");
        let can = Command::new("ip").args(["netns", "add", &probe]).output();
        match can {
            Ok(o) if o.status.success() => {
                let _ = Command::new("ip").args(["netns", "del", &probe]).output();
            }
            Ok(o) => {
                eprintln!(
                    "\n*** SKIPPED {test}: cannot make a network namespace (needs root): {} ***\n",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                return None;
            }
            Err(e) => {
                eprintln!("\n*** SKIPPED {test}: cannot run `ip` (iproute2): {e} ***\n");
                return None;
            }
        }
        let tb = Testbed { prefix, n, mtu };
        let out = Command::new("bash")
            .arg(script())
            .args(["up", &n.to_string()])
            .env("TESTBED_MIDDLE", if middle { "1" } else { "0" })
            .env("TESTBED_PREFIX", &tb.prefix)
            .env("TESTBED_HUGEPAGES", "skip")
            .env("TESTBED_MTU", tb.mtu.to_string())
            .output()
            .expect("run scripts/testbed.sh");
        assert!(
            out.status.success(),
            "scripts/testbed.sh up {n} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Some(tb)
    }

    pub fn ns(&self, i: usize) -> String {
        format!("{}{i}", self.prefix)
    }

    /// `ip netns exec <ns i>`: what node i's processes run under.
    pub fn wrap(&self, i: usize) -> Vec<String> {
        ["ip", "netns", "exec", &self.ns(i)]
            .map(String::from)
            .to_vec()
    }

    /// Agent flags for node i: dpdk on net_af_packet over the namespace's veth0.
    pub fn agent_args(&self, i: usize) -> Vec<String> {
        // Jumbo: 16 KiB ring frames, and EAL memory for 4095 mbufs that hold one.
        let (rings, mem) = if self.mtu > 1500 {
            (",framesz=16384,blocksz=16384", 192)
        } else {
            ("", 64)
        };
        let eal = format!(
            "--no-pci --vdev=net_af_packet0,iface=veth0{rings} --file-prefix={}-agent \
             --no-shconf --no-huge -m {mem} --no-telemetry --lcores=0@(0-1) \
             --log-level=lib.eal:warning",
            self.ns(i)
        );
        vec!["--dpdk-eal-args".into(), eal]
    }

    /// The MAC of node i's veth0.
    pub fn mac(&self, i: usize) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.ns(i), "-br", "link", "show", "veth0"])
            .output()
            .expect("ip link show");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.split_whitespace()
            .nth(2)
            .unwrap_or_else(|| panic!("no MAC in {text:?}"))
            .to_owned()
    }

    /// Two agents on the dpdk transport, one per namespace.
    pub fn cluster(&self, extra: &[&str]) -> Cluster {
        // Normal pages for the pools: the machine's hugepages are shared.
        let mut e = vec!["--transport", "dpdk", "--no-hugepages"];
        e.extend_from_slice(extra);
        Cluster::start_wrapped(
            self.n,
            &e,
            (0..self.n).map(|i| self.wrap(i)).collect(),
            (0..self.n).map(|i| self.agent_args(i)).collect(),
            |_, a| a,
        )
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        let out = Command::new("bash")
            .arg(script())
            .arg("down")
            .env("TESTBED_PREFIX", &self.prefix)
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "warning: testbed down failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("warning: testbed down failed: {e}"),
        }
    }
}

/// The device the suite on the dpdk transport runs on: `WYVERN_TEST_DPDK_DEV`,
/// `af_packet` (default: namespaces from `scripts/testbed.sh`) or `memif`.
pub fn dpdk_dev() -> String {
    std::env::var("WYVERN_TEST_DPDK_DEV").unwrap_or_else(|_| "af_packet".into())
}

/// Is the suite on the dpdk transport over memif (`WYVERN_TEST_DPDK_DEV=memif`)?
pub fn memif() -> bool {
    super::transport() == "dpdk" && dpdk_dev() == "memif"
}

/// Does a cluster of `n` nodes on the dpdk transport run on a memif pair? On memif,
/// yes for one or two nodes. A memif pair joins two agents only (an agent with a port
/// per peer would be multi-rail), so a larger cluster runs on `net_af_packet` in
/// namespaces instead, and says so with a line that the test harness does not capture
/// (`scripts/test.sh` counts them).
pub fn memif_cluster(n: usize) -> bool {
    if !memif() {
        return false;
    }
    if n <= 2 {
        return true;
    }
    let name = std::thread::current().name().unwrap_or("a test").to_owned();
    let line = format!(
        "*** NOT ON MEMIF: {name}: a cluster of {n} nodes runs on net_af_packet instead \
         (a memif pair joins two agents) ***\n"
    );
    // Straight to the file descriptor: the test harness captures print!/eprint!.
    use std::io::Write;
    let _ = std::io::stdout().write_all(line.as_bytes());
    false
}

/// Agent flags for node `i` of a memif pair whose socket lives in `dir` (the
/// cluster's own directory): node 0 is the memif server, node 1 the client; no
/// namespaces, no hugepages (`--no-huge`), an EAL file prefix per process, and
/// `vdev_extra` appended to the `--vdev` (e.g. `,bsize=4096`). The socket is in
/// the abstract namespace (memif's default): it goes with the process, so a killed
/// server leaves no file that would keep its successor from listening.
pub fn memif_agent_args(dir: &std::path::Path, i: usize, vdev_extra: &str) -> Vec<String> {
    let role = if i == 0 { "server" } else { "client" };
    let prefix = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let eal = format!(
        "--no-pci --vdev=net_memif0,role={role},socket={}/memif.sock{vdev_extra} \
         --file-prefix={prefix}-{i} --no-shconf --no-huge -m 64 --no-telemetry \
         --lcores=0@(0-1) --log-level=lib.eal:warning",
        dir.display()
    );
    vec!["--dpdk-eal-args".into(), eal]
}

/// A delay added to what leaves netdevs (`tc qdisc ... root netem delay`), taken off
/// again when dropped (the test ended, passed or not).
#[derive(Default)]
pub struct Delayed(Vec<String>);

impl Delayed {
    /// Delay what leaves `dev` by `delay` (a `tc` time, e.g. "20ms").
    pub fn add(&mut self, dev: &str, delay: &str) {
        let out = Command::new("tc")
            .args(["qdisc", "add", "dev", dev, "root", "netem", "delay", delay])
            .output()
            .expect("tc");
        assert!(
            out.status.success(),
            "tc qdisc add dev {dev} root netem delay {delay}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.0.push(dev.to_string());
    }
}

impl Drop for Delayed {
    fn drop(&mut self) {
        for dev in &self.0 {
            let _ = Command::new("tc")
                .args(["qdisc", "del", "dev", dev, "root"])
                .output();
        }
    }
}
