//! Build script. The spine (shm, wire, agent, client, tcp) needs no native library;
//! the `dpdk` and `verbs` transports (later issues) will locate their system libraries here.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
}
