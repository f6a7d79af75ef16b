//! Job keys and link facts for the tests of peer authentication
//! (`tests/hostile_peer.rs`, `tests/verbs_transport.rs`).

use std::path::PathBuf;

/// A private job key file (mode 600, `--job-key-file`) in a directory of its
/// own, kept while the value lives; the file wins over `WYVERN_JOB_KEY`.
pub struct KeyFile {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl KeyFile {
    pub fn new() -> KeyFile {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.key");
        let key = wyvern::wire::auth::JobKey::generate().unwrap();
        std::fs::write(&path, key.to_hex()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        KeyFile { _dir: dir, path }
    }

    pub fn arg(&self) -> String {
        self.path.display().to_string()
    }
}

/// Agent `i`'s view of its peer node `j`: (resumes, losses, state).
pub fn link_facts(c: &super::Cluster, i: usize, j: u64) -> (u64, u64, String) {
    let s = c.stat(i);
    let p = s["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["node"] == j)
        .cloned()
        .unwrap_or_else(|| panic!("agent {i} has no peer {j}: {s}"));
    (
        p["counters"]["resumes"].as_u64().unwrap_or(0),
        p["counters"]["losses"].as_u64().unwrap_or(0),
        p["state"].as_str().unwrap_or("").to_string(),
    )
}
