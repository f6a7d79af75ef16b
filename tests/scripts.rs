//! `scripts/bind-nic.sh`: its refusal paths and `--dry-run`, never a real bind (every
//! case that names an existing device passes `--dry-run`). A fake sysfs tree
//! (`BIND_NIC_SYSFS`) stands in for a spare NIC, which the development machine lacks.
//!
//! `scripts/rxe-vm.sh`: its argument handling and refusals without booting, `--check`, and
//! one test that boots the Soft-RoCE VM (twice at once) to see the exit status, output and
//! environment come back, and a working directory under /tmp shared into the guest (as
//! root, or whenever the VM's prerequisites are installed).
//!
//! `scripts/setup-hugepages.sh`: `--show` against the kernel's own counts, refusals that
//! change nothing (the machine's reservation is checked and put back), and sizes, nodes,
//! `--clear` and a kernel granting too few pages against a fake sysfs (`HUGEPAGES_ROOT`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bind_nic(args: &[&str], sysfs: Option<&Path>) -> Output {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/bind-nic.sh");
    let mut c = Command::new("bash");
    c.arg(script).args(args).env_remove("SSH_CONNECTION");
    if let Some(s) = sysfs {
        c.env("BIND_NIC_SYSFS", s);
    }
    c.output().expect("run scripts/bind-nic.sh")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A fake PCI function: `class`, and a kernel interface `iface` if given.
fn fake_device(root: &Path, pci: &str, class: &str, iface: Option<&str>) {
    let dev = root.join("bus/pci/devices").join(pci);
    std::fs::create_dir_all(&dev).unwrap();
    std::fs::write(dev.join("class"), format!("{class}\n")).unwrap();
    if let Some(i) = iface {
        std::fs::create_dir_all(dev.join("net").join(i)).unwrap();
    }
}

#[test]
fn bind_nic_refuses_without_an_explicit_pci_address() {
    for args in [&[][..], &["--dry-run"][..]] {
        let o = bind_nic(args, None);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(text(&o).contains("no PCI address given"), "{}", text(&o));
    }
    let o = bind_nic(&["--dry-run", "eth0"], None);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("is not a PCI address"), "{}", text(&o));
}

#[test]
fn bind_nic_refuses_the_default_route_interface() {
    // The interface of this machine's default route, if it sits on a PCI function.
    let out = Command::new("ip")
        .args(["route", "show", "default"])
        .output();
    let Ok(out) = out else {
        eprintln!("*** SKIPPED bind_nic_refuses_the_default_route_interface: no `ip` ***");
        return;
    };
    let routes = String::from_utf8_lossy(&out.stdout).to_string();
    let dev = routes
        .split_whitespace()
        .skip_while(|w| *w != "dev")
        .nth(1)
        .map(str::to_owned);
    let pci = dev.as_ref().and_then(|d| {
        let p = std::fs::canonicalize(format!("/sys/class/net/{d}/device")).ok()?;
        // The PCI function: the path component that looks like DDDD:BB:DD.F.
        p.ancestors()
            .filter_map(|a| a.file_name()?.to_str().map(str::to_owned))
            .find(|n| n.len() == 12 && n.as_bytes()[4] == b':' && n.as_bytes()[10] == b'.')
    });
    let (Some(dev), Some(pci)) = (dev, pci) else {
        eprintln!(
            "*** SKIPPED bind_nic_refuses_the_default_route_interface: the default route \
             ({}) is not on a PCI NIC ***",
            routes.trim()
        );
        return;
    };
    // Only ever with --dry-run: were the refusal broken, nothing would change anyway.
    {
        let o = bind_nic(&["--dry-run", pci.as_str()], None);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        let t = text(&o);
        assert!(
            t.contains("carries the default route") && t.contains(&dev),
            "{t}"
        );
        assert!(!t.contains("would run") && !t.contains("running:"), "{t}");
    }
}

#[test]
fn bind_nic_dry_run_prints_the_plan_and_refuses_non_nics() {
    let root = tempfile::tempdir().unwrap();
    // A spare NIC with a kernel interface that is down and carries no route.
    fake_device(root.path(), "0000:5e:00.1", "0x020000", Some("wyvfake9"));
    // Not a network controller.
    fake_device(root.path(), "0000:5e:00.2", "0x010802", None);
    let o = bind_nic(&["--dry-run", "5e:00.1"], Some(root.path()));
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("interfaces: wyvfake9"), "{t}");
    assert!(t.contains("would run: ip link set wyvfake9 down"), "{t}");
    assert!(t.contains("--bind=vfio-pci 0000:5e:00.1"), "{t}");
    assert!(t.contains("dry run: nothing changed"), "{t}");
    assert!(!t.contains("running:"), "{t}");
    let o = bind_nic(
        &["--dry-run", "--unbind", "--driver", "ice", "0000:5e:00.1"],
        Some(root.path()),
    );
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("would run: ") && t.contains("--bind=ice 0000:5e:00.1"),
        "{t}"
    );
    let o = bind_nic(&["--dry-run", "0000:5e:00.2"], Some(root.path()));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("not a network controller"),
        "{}",
        text(&o)
    );
    let o = bind_nic(&["--dry-run", "0000:5e:00.7"], Some(root.path()));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("no PCI device"), "{}", text(&o));
}

// ------------------------------------------------------------------ scripts/rxe-vm.sh

fn rxe_vm_in(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/rxe-vm.sh");
    let mut c = Command::new("bash");
    c.arg(script).args(args).current_dir(dir);
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().expect("run scripts/rxe-vm.sh")
}

fn rxe_vm(args: &[&str]) -> Output {
    rxe_vm_in(Path::new(env!("CARGO_MANIFEST_DIR")), args, &[])
}

#[test]
fn rxe_vm_help_and_usage_errors() {
    let o = rxe_vm(&["--help"]);
    assert!(o.status.success(), "{}", text(&o));
    let t = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(t.contains("Usage: scripts/rxe-vm.sh [options] CMD"), "{t}");
    for opt in ["--env NAME", "--timeout SECS", "--check", "--accel tcg|kvm"] {
        assert!(t.contains(opt), "--help lacks {opt}: {t}");
    }
    assert!(!t.contains("set -euo"), "{t}");

    let o = rxe_vm(&["--bogus", "true"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("unknown option '--bogus'"),
        "{}",
        text(&o)
    );
    let o = rxe_vm(&[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("no command given"), "{}", text(&o));
    let o = rxe_vm(&["--timeout", "soon", "true"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--timeout needs"), "{}", text(&o));
    let o = rxe_vm(&["--env", "1X", "true"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = rxe_vm(&["--accel", "hvf", "true"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    // The guest-side mode refuses to run outside the VM (it rewires the network).
    let o = rxe_vm(&["--in-guest", "/nonexistent"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("for the VM's init only"), "{}", text(&o));
}

#[test]
fn rxe_vm_refuses_what_it_cannot_share() {
    // The guest needs its own /tmp (a fresh tmpfs), /proc, /sys and /dev: a working
    // directory there cannot be shared again. (Below /tmp it can: see the boot test.)
    for dir in ["/tmp", "/proc", "/sys/kernel"] {
        let o = rxe_vm_in(Path::new(dir), &["true"], &[]);
        assert_eq!(o.status.code(), Some(2), "{dir}: {}", text(&o));
        let t = text(&o);
        assert!(
            t.contains(&format!("the current directory {dir}")) && t.contains("cannot be shared"),
            "{dir}: {t}"
        );
        assert!(!t.contains("booting"), "{t}");
    }
    let o = rxe_vm(&["--share", "/proc/self", "true"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("cannot be shared"), "{}", text(&o));
    let o = rxe_vm(&["--share", "/nonexistent-wyvern", "true"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("not a directory"), "{}", text(&o));
    let o = rxe_vm(&["--share"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

/// `--check`: 0 and "ready", or 77 and what is missing.
fn rxe_vm_ready() -> (bool, String) {
    let o = rxe_vm(&["--check"]);
    let t = text(&o);
    match o.status.code() {
        Some(0) => {
            assert!(t.contains("[rxe-vm] ready"), "{t}");
            (true, t)
        }
        Some(77) => {
            assert!(
                t.contains("missing: ") && t.contains("install-deps.sh"),
                "{t}"
            );
            (false, t)
        }
        c => panic!("rxe-vm.sh --check exited {c:?}: {t}"),
    }
}

#[test]
fn rxe_vm_check_says_what_is_missing() {
    rxe_vm_ready();
    let o = rxe_vm_in(
        Path::new(env!("CARGO_MANIFEST_DIR")),
        &["--check"],
        &[("WYVERN_RXE_VM_KERNEL", "0.0-wyvern-none")],
    );
    assert_eq!(o.status.code(), Some(77), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("missing: /boot/vmlinuz-0.0-wyvern-none")
            && t.contains("missing: module rdma_rxe of kernel 0.0-wyvern-none"),
        "{t}"
    );
    // Without --check, missing prerequisites mean "the VM cannot start": 77, before booting.
    let o = rxe_vm_in(
        Path::new(env!("CARGO_MANIFEST_DIR")),
        &["true"],
        &[("WYVERN_RXE_VM_KERNEL", "0.0-wyvern-none")],
    );
    assert_eq!(o.status.code(), Some(77), "{}", text(&o));
    assert!(text(&o).contains("VM CANNOT START"), "{}", text(&o));
}

/// Boots the VM twice, at the same time (runs may overlap): a command that succeeds and
/// prints to both streams, and `false`. Each boot takes ~30-60 s of wall time here (TCG).
/// Runs as root (CI); skipped when the VM's prerequisites are missing and we are not root,
/// when WYVERN_TEST_RXE_VM=0, and (loudly) when the VM cannot start (exit 77).
#[test]
fn rxe_vm_boots_and_passes_the_exit_status_back() {
    if std::env::var("WYVERN_TEST_RXE_VM").as_deref() == Ok("0") {
        eprintln!(
            "*** SKIPPED rxe_vm_boots_and_passes_the_exit_status_back: WYVERN_TEST_RXE_VM=0 ***"
        );
        return;
    }
    let (ready, why) = rxe_vm_ready();
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !ready {
        // CI runs as root after scripts/install-deps.sh core: there the VM must be possible.
        assert!(
            !root,
            "as root the VM's prerequisites must be installed: {why}"
        );
        eprintln!("*** SKIPPED rxe_vm_boots_and_passes_the_exit_status_back (not root): {why} ***");
        return;
    }
    // The first run works in a directory under /tmp (the guest's /tmp is its own tmpfs):
    // the VM shares it again at the same path, with the command that lives there.
    let here = tempfile::Builder::new()
        .prefix("wyvern-rxe-vm")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::write(here.path().join("file.txt"), "seen-in-guest\n").unwrap();
    std::fs::write(
        here.path().join("cmd.sh"),
        "echo \"out:$WYVERN_RXE_DEVS:$WYVERN_SCRIPTS_TEST:$WYVERN_EXTRA:${NOT_FORWARDED:-unset}:$(pwd):$(cat file.txt)\"\n\
         echo to-stderr >&2\n",
    )
    .unwrap();
    let spawn = |dir: &Path, args: &[&str]| {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/rxe-vm.sh");
        Command::new("bash")
            .arg(script)
            .args(["--timeout", "600", "--hugepages", "0", "--mem", "1024"])
            .args(args)
            .current_dir(dir)
            .env("WYVERN_SCRIPTS_TEST", "forwarded")
            .env("NOT_FORWARDED", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn scripts/rxe-vm.sh")
    };
    let cmd = here.path().join("cmd.sh");
    let ok = spawn(
        here.path(),
        &[
            "--env",
            "WYVERN_EXTRA=set here",
            "sh",
            cmd.to_str().unwrap(),
        ],
    );
    let bad = spawn(Path::new(env!("CARGO_MANIFEST_DIR")), &["false"]);
    let ok = ok.wait_with_output().unwrap();
    let bad = bad.wait_with_output().unwrap();
    for o in [&ok, &bad] {
        if o.status.code() == Some(77) {
            eprintln!(
                "*** SKIPPED rxe_vm_boots_and_passes_the_exit_status_back: the VM could not start: {} ***",
                text(o)
            );
            return;
        }
    }
    let out = String::from_utf8_lossy(&ok.stdout).to_string();
    let err = String::from_utf8_lossy(&ok.stderr).to_string();
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
    assert_eq!(
        out.trim(),
        format!(
            "out:rxe0 rxe1:forwarded:set here:unset:{}:seen-in-guest",
            std::fs::canonicalize(here.path()).unwrap().display()
        ),
        "{}",
        text(&ok)
    );
    assert!(err.contains("to-stderr"), "{err}");
    assert!(err.contains("[rxe-vm] guest up after"), "{err}");
    assert!(err.contains("sharing with the guest"), "{err}");
    assert!(err.contains("exited with 0"), "{err}");
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert!(text(&bad).contains("exited with 1"), "{}", text(&bad));
}

// ------------------------------------------------------------------ bench/verbs_rxe.sh

/// The verbs benchmark's two scripts parse; the host script's plan-only mode prints the
/// configuration and every measurement without booting the VM, and honours the guest's
/// settings; the guest script refuses to measure outside the VM.
#[test]
fn verbs_bench_scripts_parse_and_print_their_plan() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for s in ["bench/verbs_rxe.sh", "bench/verbs_rxe_guest.sh"] {
        let o = Command::new("bash")
            .arg("-n")
            .arg(root.join(s))
            .output()
            .unwrap();
        assert!(o.status.success(), "bash -n {s}: {}", text(&o));
    }
    let o = Command::new("bash")
        .arg(root.join("bench/verbs_rxe.sh"))
        .env("VERBS_BENCH_PLAN_ONLY", "1")
        .env("RUNS", "5")
        .env("BW_SIZES", "65536 4194304")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    for want in [
        "plan only",
        "plan: 5 runs",
        "core layout: 2 vCPUs",
        "--transport verbs --verbs-device rxeI --verbs-gid-index 1",
        "ib_send_lat",
        "ib_write_bw and ib_read_bw -s 65536 -n 256",
        "-s 4194304 -n 8",
        "ib_send_bw -s 8",
        "UCX_TLS=rc_verbs",
    ] {
        assert!(t.contains(want), "plan lacks {want:?}: {t}");
    }
    assert!(!t.contains("booting"), "{t}");
    let o = Command::new("bash")
        .arg(root.join("bench/verbs_rxe_guest.sh"))
        .env_remove("WYVERN_RXE_DEVS")
        .env_remove("PLAN_ONLY")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("run me through"), "{}", text(&o));
}

// ------------------------------------------------------------ scripts/setup-hugepages.sh

fn hugepages(args: &[&str], root: Option<&Path>) -> Output {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/setup-hugepages.sh");
    let mut c = Command::new("bash");
    c.arg(script).args(args);
    match root {
        Some(r) => c.env("HUGEPAGES_ROOT", r),
        None => c.env_remove("HUGEPAGES_ROOT"),
    };
    c.output().expect("run scripts/setup-hugepages.sh")
}

fn nr_hugepages() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/vm/nr_hugepages")
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn meminfo(key: &str) -> Option<u64> {
    let m = std::fs::read_to_string("/proc/meminfo").ok()?;
    m.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Puts the reservation back as the tests found it (the CI's pages), even if a check failed.
struct RestorePages(Option<u64>);

impl Drop for RestorePages {
    fn drop(&mut self) {
        if let Some(n) = self.0 {
            if nr_hugepages() != Some(n) {
                let _ = std::fs::write("/proc/sys/vm/nr_hugepages", format!("{n}\n"));
            }
        }
    }
}

/// On this machine: `--show` agrees with /proc/meminfo and /proc/mounts; a page size the
/// kernel lacks, a node that does not exist and a request larger than the machine's memory
/// are refused (exit 2) before anything changes; a user who may not write the reservation
/// gets exit 1 and why; a request already met changes nothing and exits 0.
#[test]
fn hugepages_script_shows_the_state_and_fails_loudly() {
    if !Path::new("/sys/kernel/mm/hugepages").is_dir() {
        eprintln!("*** SKIPPED hugepages_script_shows_the_state_and_fails_loudly: no hugetlb ***");
        return;
    }
    let before = nr_hugepages();
    let _restore = RestorePages(before);
    let o = hugepages(&["--show"], None);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    let size_kb = meminfo("Hugepagesize").unwrap();
    let name = if size_kb % (1 << 20) == 0 {
        format!("{}G", size_kb >> 20)
    } else {
        format!("{}M", size_kb >> 10)
    };
    // The default size's line for all nodes: total as the kernel counts it.
    let line = t
        .lines()
        .find(|l| l.starts_with(&name) && l.contains("(default size)"))
        .unwrap_or_else(|| panic!("no default-size line: {t}"));
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f[1], "all", "{t}");
    assert_eq!(f[2].parse::<u64>().ok(), meminfo("HugePages_Total"), "{t}");
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    match mounts
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some("hugetlbfs"))
    {
        Some(m) => {
            let dir = m.split_whitespace().nth(1).unwrap();
            assert!(t.contains(&format!("mount: {dir} (")), "{t}");
        }
        None => assert!(t.contains("no hugetlbfs mounted"), "{t}"),
    }

    for (args, want) in [
        (&["-p", "3M", "4"][..], "page size 3M is not supported"),
        (&["-p", "2X", "4"][..], "is not a size"),
        (&["-n", "4095", "4"][..], "no NUMA node 4095"),
        (
            &["--no-mount", "100000000"][..],
            "more than this machine's memory",
        ),
        (&["--show", "--clear"][..], "only one of"),
        (&["many"][..], "non-negative integer"),
    ] {
        let o = hugepages(args, None);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(want), "{args:?}: {}", text(&o));
        assert!(text(&o).contains("ERROR"), "{args:?}: {}", text(&o));
        assert_eq!(nr_hugepages(), before, "{args:?} changed the reservation");
    }

    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    // Already met: nothing to do, exit 0 (as CI's step (b) runs it).
    let have = before.unwrap_or(0).to_string();
    let o = hugepages(&["--no-mount", &have], None);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("leaving as is"), "{}", text(&o));
    // Another user cannot raise the reservation: exit 1, and why.
    let more = (before.unwrap_or(0) + 1).to_string();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/setup-hugepages.sh");
    if let Ok(o) = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "bash"])
        .arg(&script)
        .args(["--no-mount", &more])
        .output()
    {
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(text(&o).contains("not root"), "{}", text(&o));
    }
    assert_eq!(nr_hugepages(), before);
}

/// A fake sysfs/procfs tree (HUGEPAGES_ROOT) with two sizes on two NUMA nodes.
fn fake_hugepages_tree(root: &Path) {
    for kb in ["2048", "1048576"] {
        let g = root.join(format!("sys/kernel/mm/hugepages/hugepages-{kb}kB"));
        std::fs::create_dir_all(&g).unwrap();
        std::fs::write(g.join("nr_hugepages"), "8\n").unwrap();
        std::fs::write(g.join("free_hugepages"), "6\n").unwrap();
        for n in 0..2 {
            let d = root.join(format!(
                "sys/devices/system/node/node{n}/hugepages/hugepages-{kb}kB"
            ));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("nr_hugepages"), "4\n").unwrap();
            std::fs::write(d.join("free_hugepages"), "3\n").unwrap();
        }
    }
    std::fs::create_dir_all(root.join("proc")).unwrap();
    std::fs::write(
        root.join("proc/meminfo"),
        "MemTotal:       16000000 kB\nHugepagesize:       2048 kB\n",
    )
    .unwrap();
    std::fs::write(
        root.join("proc/mounts"),
        "nodev /dev/hugepages hugetlbfs rw,relatime,pagesize=2M 0 0\n",
    )
    .unwrap();
}

/// Against a fake tree: per-size and per-node `--show`, reserving 1G pages on one node,
/// `--clear` of one size, and a kernel that grants fewer pages than asked (exit 1).
#[test]
fn hugepages_script_sizes_nodes_clear_and_shortfall_on_a_fake_tree() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fake_hugepages_tree(root);
    let read = |p: &str| {
        std::fs::read_to_string(root.join(p))
            .unwrap()
            .trim()
            .to_string()
    };
    let o = hugepages(&["--show"], Some(root));
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    for want in [
        "size node total free",
        "2M all 8 6 (default size)",
        "2M 1 4 3",
        "1G 0 4 3",
        "mount: /dev/hugepages (rw,relatime,pagesize=2M)",
    ] {
        assert!(
            t.lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>().join(" ") == want),
            "lacks {want:?}: {t}"
        );
    }
    // 1G pages on node 1 (the fake kernel grants what is written).
    let o = hugepages(&["-p", "1G", "-n", "1", "--no-mount", "6"], Some(root));
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        read("sys/devices/system/node/node1/hugepages/hugepages-1048576kB/nr_hugepages"),
        "6"
    );
    assert_eq!(
        read("sys/devices/system/node/node0/hugepages/hugepages-1048576kB/nr_hugepages"),
        "4"
    );
    // --reserve rounds up to whole pages: 5M of 2M pages = 3 pages, fewer than the 8 there.
    let o = hugepages(&["-r", "5M", "--no-mount"], Some(root));
    assert!(
        text(&o).contains("8 reserved (>= 3 wanted), leaving as is"),
        "{}",
        text(&o)
    );
    // --clear of one size leaves the other.
    let o = hugepages(&["--clear", "-p", "2M"], Some(root));
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        read("sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"),
        "0"
    );
    assert_eq!(
        read("sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages"),
        "8"
    );
    // A kernel that grants nothing (the count reads back 0): exit 1, saying so.
    let f = root.join("sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages");
    std::fs::remove_file(&f).unwrap();
    std::os::unix::fs::symlink("/dev/null", &f).unwrap();
    let o = hugepages(&["--no-mount", "16"], Some(root));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("the kernel granted only 0 of 16 2M pages"),
        "{}",
        text(&o)
    );
    // A mount point of another page size is refused, not remounted.
    let o = hugepages(&["--mount", "-p", "1G", "-d", "/dev/hugepages"], Some(root));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("another page size"), "{}", text(&o));
}

// ---------------------------------------------------------------- scripts/install-deps.sh

fn install_deps_list(sets: &[&str]) -> Vec<String> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/install-deps.sh");
    let o = Command::new("bash")
        .arg(script)
        .arg("--list")
        .args(sets)
        .output()
        .expect("run scripts/install-deps.sh --list");
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The package sets: running needs neither the test machinery nor a compiler; core (what
/// CI installs) is build + test, as before the split; unknown sets are refused.
#[test]
fn install_deps_sets_say_what_each_is_for() {
    let runtime = install_deps_list(&["runtime"]);
    let build = install_deps_list(&["build"]);
    let test = install_deps_list(&["test"]);
    let core = install_deps_list(&[]);
    assert_eq!(core, install_deps_list(&["core"]));
    let has = |l: &[String], p: &str| l.iter().any(|x| x == p);
    for p in [
        "slurm-wlm",
        "munge",
        "qemu-system-x86",
        "linux-image-amd64",
        "clang",
    ] {
        assert!(!has(&runtime, p), "runtime installs {p}: {runtime:?}");
    }
    for p in ["libibverbs1", "ibverbs-providers", "dpdk"] {
        assert!(has(&runtime, p), "runtime lacks {p}: {runtime:?}");
    }
    for p in ["clang", "libdpdk-dev", "libibverbs-dev", "build-essential"] {
        assert!(has(&build, p), "build lacks {p}: {build:?}");
    }
    for p in [
        "slurm-wlm",
        "qemu-system-x86",
        "busybox-static",
        "perftest",
        "python3-venv",
    ] {
        assert!(
            has(&test, p) && !has(&build, p),
            "{p}: build {build:?} test {test:?}"
        );
    }
    // core = build + test, exactly what CI installed before the split.
    let mut want: Vec<String> = build.iter().chain(&test).cloned().collect();
    want.sort();
    want.dedup();
    let mut got = core.clone();
    got.sort();
    assert_eq!(got, want);
    for p in [
        "pkg-config",
        "build-essential",
        "iproute2",
        "procps",
        "util-linux",
        "slurm-wlm",
        "munge",
        "libdpdk-dev",
        "dpdk-dev",
        "clang",
        "libclang-dev",
        "python3",
        "python3-venv",
        "libibverbs-dev",
        "librdmacm-dev",
        "rdma-core",
        "ibverbs-providers",
        "ibverbs-utils",
        "perftest",
        "qemu-system-x86",
        "linux-image-amd64",
        "busybox-static",
        "cpio",
        "kmod",
    ] {
        assert!(has(&core, p), "core lacks {p}");
    }
    let bench = install_deps_list(&["bench"]);
    assert!(
        core.iter().all(|p| has(&bench, p)) && has(&bench, "sockperf"),
        "{bench:?}"
    );
    let both = install_deps_list(&["runtime", "build"]);
    assert_eq!(both.len(), {
        let mut u: Vec<&String> = runtime.iter().chain(&build).collect();
        u.sort();
        u.dedup();
        u.len()
    });
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/install-deps.sh");
    let o = Command::new("bash")
        .arg(&script)
        .arg("bogus")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("unknown set 'bogus'"), "{}", text(&o));
    let o = Command::new("bash")
        .arg(&script)
        .arg("--help")
        .output()
        .unwrap();
    let t = text(&o);
    for set in [
        "runtime -",
        "build   -",
        "test    -",
        "core    -",
        "bench   -",
    ] {
        assert!(t.contains(set), "--help lacks {set:?}: {t}");
    }
}

/// A PNG's text chunks (`tEXt`, and `iTXt` uncompressed, which matplotlib
/// writes for text beyond Latin-1): keyword and text.
fn png_texts(png: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut at = 8; // the signature
    while at + 8 <= png.len() {
        let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
        let kind = &png[at + 4..at + 8];
        let body = &png[at + 8..(at + 8 + len).min(png.len())];
        if let Some(z) = body.iter().position(|&b| b == 0) {
            let key = String::from_utf8_lossy(&body[..z]).into_owned();
            let rest = &body[z + 1..];
            if kind == b"tEXt" {
                out.push((key, String::from_utf8_lossy(rest).into_owned()));
            } else if kind == b"iTXt" && rest.first() == Some(&0) {
                // flag 0 (uncompressed), method, language\0, translated keyword\0, text
                let text = rest[2..].splitn(3, |&b| b == 0).nth(2).unwrap_or_default();
                out.push((key, String::from_utf8_lossy(text).into_owned()));
            }
        }
        at += 12 + len;
    }
    out
}

/// `bench/plot.py` on a small sweep CSV: the four plots (bandwidth among them),
/// each stamped with the commit and date it is given (in the figure and in the
/// PNG's metadata), the bandwidth table computed from the 1 → 1 rate, and what
/// each system ran on. Needs matplotlib (`python3-matplotlib`, installed by
/// `scripts/install-deps.sh test`).
#[test]
fn plot_script_draws_every_figure_with_its_stamp_and_a_bandwidth_table() {
    let python = ["/usr/bin/python3", "python3"]
        .into_iter()
        .find(|p| {
            Command::new(p)
                .args(["-c", "import matplotlib"])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("no python3 with matplotlib: apt-get install python3-matplotlib (scripts/install-deps.sh test)");
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("sweep.csv");
    std::fs::write(
        &csv,
        "metric,size,system,runs,median,secs,note\n\
         latency_us,8,wyvern-tcp,\"10 12 11\",11,\"1 1 1\",\"\"\n\
         latency_us,8,ucx,\"5 5 5\",5,\"1 1 1\",\"\"\n\
         latency_us,1048576,wyvern-tcp,\"500\",500,\"1\",\"\"\n\
         latency_us,1048576,ucx,\"250\",250,\"1\",\"\"\n\
         rate_msgs,8,wyvern-tcp,\"3000000\",3000000,\"1\",\"\"\n\
         rate_msgs,8,ucx,\"200000\",200000,\"1\",\"\"\n\
         rate_msgs,1048576,wyvern-tcp,\"2000\",2000,\"1\",\"\"\n\
         rate_msgs,1048576,ucx,\"1000\",1000,\"1\",\"\"\n\
         rate4_msgs,8,wyvern-tcp,\"3000000\",3000000,\"1\",\"\"\n\
         rate4_msgs,8,mpi,\"500000\",500000,\"1\",\"\"\n",
    )
    .unwrap();
    let stamp = "data: git abc1234, 2026-12-07 (test)";
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench/plot.py");
    let o = Command::new(python)
        .arg(&script)
        .arg(&csv)
        .arg(dir.path())
        .args(["--stamp", stamp])
        .output()
        .unwrap();
    assert!(o.status.success(), "plot.py failed: {}", text(&o));
    for png in ["latency", "rate", "rate4", "bandwidth"] {
        let bytes = std::fs::read(dir.path().join(format!("{png}.png")))
            .unwrap_or_else(|e| panic!("{png}.png not written: {e}; {}", text(&o)));
        assert!(bytes.starts_with(b"\x89PNG"), "{png}.png is not a PNG");
        let texts = png_texts(&bytes);
        assert!(
            texts
                .iter()
                .any(|(k, v)| k == "Description" && v.contains(stamp)),
            "{png}.png does not carry the stamp: {texts:?}"
        );
    }
    let md = std::fs::read_to_string(dir.path().join("sweep.md")).unwrap();
    // 2,000 msgs/s of 1 MiB = 2,097.15 MB/s; 1,000 = 1,048.58; ratio 2.00×.
    let bw = md
        .lines()
        .skip_while(|l| !l.starts_with("**Bandwidth"))
        .find(|l| l.starts_with("| 1 MiB"))
        .unwrap_or_else(|| panic!("no 1 MiB row in the bandwidth table:\n{md}"));
    assert!(
        bw.contains("2,097.15") && bw.contains("1,048.58") && bw.contains("2.00×"),
        "bandwidth row: {bw}"
    );
    assert!(
        md.contains(stamp),
        "the tables do not say what data they show:\n{md}"
    );
    assert!(
        md.contains("ucx: UCX_TLS=tcp") && md.contains("mpi: ob1, tcp btl"),
        "sweep.md does not say what the peers ran on:\n{md}"
    );
    // A stamp flag without its value is a usage error, not a plot without one.
    let o = Command::new(python)
        .arg(&script)
        .arg(&csv)
        .arg(dir.path())
        .arg("--stamp")
        .output()
        .unwrap();
    assert!(
        !o.status.success() && text(&o).contains("--stamp needs a value"),
        "{}",
        text(&o)
    );
}
