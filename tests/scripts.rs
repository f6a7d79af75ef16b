//! `scripts/bind-nic.sh`: its refusal paths and `--dry-run`, never a real bind (every
//! case that names an existing device passes `--dry-run`). A fake sysfs tree
//! (`BIND_NIC_SYSFS`) stands in for a spare NIC, which the development machine lacks.

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
