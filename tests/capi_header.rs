//! `include/wyvern.h` must be what cbindgen makes of `src/capi` today.
//!
//! Refresh it with `scripts/gen-header.sh` (which runs this test with
//! `WYVERN_BLESS=1`, writing the header instead of comparing).

use std::path::Path;

fn generate() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut out = Vec::new();
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(root.join("src/capi/mod.rs"))
        .generate()
        .expect("cbindgen parses src/capi")
        .write(&mut out);
    String::from_utf8(out).expect("UTF-8 header")
}

#[test]
fn the_checked_in_header_is_up_to_date() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = root.join("include/wyvern.h");
    let fresh = generate();
    assert!(
        fresh.contains("int wyvern_attach(") && fresh.contains("#define WYVERN_OK 0"),
        "cbindgen found no API in src/capi:\n{fresh}"
    );
    if std::env::var_os("WYVERN_BLESS").is_some() {
        std::fs::write(&path, &fresh).expect("write include/wyvern.h");
        return;
    }
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    if old != fresh {
        let first = old
            .lines()
            .zip(fresh.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(old.lines().count().min(fresh.lines().count()));
        panic!(
            "include/wyvern.h is stale (first difference at line {}). Refresh it with\n\n    \
             scripts/gen-header.sh\n\nand commit the result.",
            first + 1
        );
    }
}

/// The header's version macros are Cargo's version (src/capi also refuses to
/// build otherwise), and `WYVERN_API_VERSION` is MAJOR * 10000 + MINOR * 100 +
/// PATCH.
#[test]
fn the_header_version_is_cargos() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let header = std::fs::read_to_string(root.join("include/wyvern.h")).expect("wyvern.h");
    let define = |name: &str| -> i64 {
        let prefix = format!("#define {name} ");
        header
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("include/wyvern.h has no {name}"))
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let part = |s: &str| s.parse::<i64>().expect("a version number");
    let (major, minor, patch) = (
        part(env!("CARGO_PKG_VERSION_MAJOR")),
        part(env!("CARGO_PKG_VERSION_MINOR")),
        part(env!("CARGO_PKG_VERSION_PATCH")),
    );
    assert_eq!(define("WYVERN_VERSION_MAJOR"), major);
    assert_eq!(define("WYVERN_VERSION_MINOR"), minor);
    assert_eq!(define("WYVERN_VERSION_PATCH"), patch);
    assert_eq!(
        define("WYVERN_API_VERSION"),
        major * 10000 + minor * 100 + patch
    );
    assert!(header.contains("int wyvern_api_version(void);"));
    assert!(header.contains("const char *wyvern_version_string(void);"));
}
