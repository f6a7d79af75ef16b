//! The C API (`include/wyvern.h`, generated from this file by cbindgen).
//!
//! Every function returns `WYVERN_OK` (0) or a negative `WYVERN_E*` code
//! (`wyvern_strerror` names it, `wyvern_last_error` gives this thread's
//! detail of the last failure), except the few that say otherwise.
//!
//! Handles (`wyvern_client *`, `wyvern_endpoint *`, `wyvern_msg *`) are
//! opaque: their values are ids checked against a registry on every call,
//! never dereferenced, so a made-up, stale (after `wyvern_detach` or
//! `wyvern_msg_release`) or wrong-kind handle gives `WYVERN_EBADHANDLE`, and
//! an endpoint closed with `wyvern_endpoint_close` gives `WYVERN_ECLOSED`.
//!
//! Threads: a client and its endpoints and messages are used from one thread
//! at a time (any thread, one after the other). A call that finds another
//! call on the same client in progress fails at once with `WYVERN_EBUSY`.
//! For parallelism attach once per thread.
//!
//! No Rust panic crosses the boundary: each function runs inside
//! `catch_unwind` and turns a panic into `WYVERN_EINTERNAL`.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CStr, CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use crate::client::{self, Client, Message, Mode, SendBuf, Status};

mod registry;
use registry::{ClientState, EpState, Kind};

#[cfg(test)]
mod tests;

// ----------------------------------------------------------------- version

/// The major version of the C API this header describes (Cargo's version of
/// the crate; a test and a compile-time check keep them equal). The shared
/// library's soname follows it: `libwyvern.so.MAJOR`, or `libwyvern.so.0.MINOR`
/// while the major is 0 (where every minor release may break the ABI).
pub const WYVERN_VERSION_MAJOR: c_int = 0;
/// The minor version of the C API this header describes.
pub const WYVERN_VERSION_MINOR: c_int = 1;
/// The patch version of the C API this header describes.
pub const WYVERN_VERSION_PATCH: c_int = 0;
/// The version of this header as one number, MAJOR * 10000 + MINOR * 100 +
/// PATCH (0.1.0 is 100), for `#if WYVERN_API_VERSION >= 200`; compare it with
/// `wyvern_api_version()`, the library's own, at run time.
pub const WYVERN_API_VERSION: c_int = 100;

/// `digits` as a number, at compile time (Cargo's version parts).
const fn parse_version_part(digits: &str) -> c_int {
    let b = digits.as_bytes();
    let mut i = 0;
    let mut n: c_int = 0;
    while i < b.len() {
        assert!(b[i].is_ascii_digit(), "a version part that is not a number");
        n = n * 10 + (b[i] - b'0') as c_int;
        i += 1;
    }
    n
}

/// The library's version parts, from Cargo (`Cargo.toml`).
const LIB_VERSION: (c_int, c_int, c_int) = (
    parse_version_part(env!("CARGO_PKG_VERSION_MAJOR")),
    parse_version_part(env!("CARGO_PKG_VERSION_MINOR")),
    parse_version_part(env!("CARGO_PKG_VERSION_PATCH")),
);

// The header's version is Cargo's: a release that bumps Cargo.toml's version
// must bump these constants (and regenerate include/wyvern.h) or not build.
const _: () = assert!(
    WYVERN_VERSION_MAJOR == LIB_VERSION.0
        && WYVERN_VERSION_MINOR == LIB_VERSION.1
        && WYVERN_VERSION_PATCH == LIB_VERSION.2
        && WYVERN_API_VERSION
            == WYVERN_VERSION_MAJOR * 10000 + WYVERN_VERSION_MINOR * 100 + WYVERN_VERSION_PATCH,
    "the WYVERN_VERSION_* constants of src/capi must be Cargo.toml's version"
);

/// The version of the library loaded at run time, as `WYVERN_API_VERSION`
/// counts it (MAJOR * 10000 + MINOR * 100 + PATCH). A program built against
/// one header and run with another library can compare the two, e.g. refuse
/// to run when `wyvern_api_version() / 10000 != WYVERN_VERSION_MAJOR`.
#[no_mangle]
pub extern "C" fn wyvern_api_version() -> c_int {
    LIB_VERSION.0 * 10000 + LIB_VERSION.1 * 100 + LIB_VERSION.2
}

/// The version of the library loaded at run time as a static string
/// (`"0.1.0"`).
#[no_mangle]
pub extern "C" fn wyvern_version_string() -> *const c_char {
    const V: &CStr =
        match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
            Ok(v) => v,
            Err(_) => panic!("Cargo's version has a NUL"),
        };
    V.as_ptr()
}

// ------------------------------------------------------------------ codes

/// Success.
pub const WYVERN_OK: c_int = 0;
/// Nothing could be done right now: no message waiting (a receive with
/// timeout 0), or no room in the submission ring or the pool within the
/// timeout (the agent or the network pushes back).
pub const WYVERN_EAGAIN: c_int = -1;
/// Waited the whole timeout: no message arrived, or no completion came for a
/// `WYVERN_DELIVERED` send (the message may still be delivered later).
pub const WYVERN_ETIMEDOUT: c_int = -2;
/// An invalid argument: a NULL pointer, a NULL buffer with a length, an
/// unknown flag, a string that is not valid.
pub const WYVERN_EINVAL: c_int = -3;
/// A handle that is not (or no longer) valid, or names another kind of object.
pub const WYVERN_EBADHANDLE: c_int = -4;
/// The endpoint was closed.
pub const WYVERN_ECLOSED: c_int = -5;
/// The receive buffer is too small; the needed length was stored in
/// `*out_len` and the message stays first in line.
pub const WYVERN_ENOSPC: c_int = -6;
/// The message is larger than the pool can ever hold.
pub const WYVERN_ETOOLARGE: c_int = -7;
/// No endpoint with that id on the destination node.
pub const WYVERN_EUNKNOWN_ENDPOINT: c_int = -8;
/// The destination node is not in the agent's node list.
pub const WYVERN_EUNKNOWN_NODE: c_int = -9;
/// The destination node is lost (its agent died or stopped answering).
pub const WYVERN_EPEER_LOST: c_int = -10;
/// The destination endpoint was closed before the message was deposited.
pub const WYVERN_EDEST_CLOSED: c_int = -11;
/// The pool has no block of that size right now.
pub const WYVERN_ENOMEM: c_int = -12;
/// The agent refused the request (attach not allowed, endpoint id in use, …),
/// or the socket's permissions do not let this user connect.
pub const WYVERN_EREFUSED: c_int = -13;
/// No agent listens at that socket, or the listener runs as another uid
/// than this user's, root's or `WYVERN_AGENT_UID` (not our agent).
pub const WYVERN_ECONNECT: c_int = -14;
/// The agent went away; the client is useless (detach it).
pub const WYVERN_EAGENT_GONE: c_int = -15;
/// The agent and this library disagree (malformed record or reply), or an
/// I/O error on the control socket.
pub const WYVERN_EPROTO: c_int = -16;
/// Another thread is inside a call on the same client.
pub const WYVERN_EBUSY: c_int = -17;
/// An internal error (a bug in wyvern); see `wyvern_last_error`.
pub const WYVERN_EINTERNAL: c_int = -18;

/// `wyvern_endpoint_open`: let the agent pick the endpoint id.
pub const WYVERN_ANY: u32 = u32::MAX;
/// A timeout meaning "wait as long as it takes" (any negative value does).
/// A timeout of 0 means "try once, do not wait".
pub const WYVERN_FOREVER: i64 = -1;
/// `wyvern_send` flag: return once the message is in the submission ring.
pub const WYVERN_BUFFERED: u32 = 0;
/// `wyvern_send` flag: return once the destination agent deposited the
/// message in the endpoint's receive ring.
pub const WYVERN_DELIVERED: u32 = 1;
/// `wyvern_async_error.node` when the error is not about a lost node.
pub const WYVERN_NO_NODE: u32 = u32::MAX;

/// An attached client (opaque).
#[allow(non_camel_case_types)]
pub struct wyvern_client {
    _opaque: [u8; 0],
}

/// An open endpoint (opaque).
#[allow(non_camel_case_types)]
pub struct wyvern_endpoint {
    _opaque: [u8; 0],
}

/// A received message held until `wyvern_msg_release` (opaque).
#[allow(non_camel_case_types)]
pub struct wyvern_msg {
    _opaque: [u8; 0],
}

/// A pool block to fill in place and send without a copy (opaque): from
/// `wyvern_alloc`, consumed by `wyvern_send_buf`, or given back with
/// `wyvern_buf_free`.
#[allow(non_camel_case_types)]
pub struct wyvern_buf {
    _opaque: [u8; 0],
}

/// A failure reported after a `WYVERN_BUFFERED` send returned.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct wyvern_async_error {
    /// The cookie `wyvern_send_ex` returned for the send, or `UINT64_MAX` for
    /// a lost node (buffered sends to `node` since the previous report may
    /// not have arrived).
    pub cookie: u64,
    /// What went wrong: a `WYVERN_E*` code.
    pub status: c_int,
    /// The lost node, or `WYVERN_NO_NODE`.
    pub node: u32,
}

/// One message of a batch for `wyvern_send_many`.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug)]
pub struct wyvern_out {
    /// Destination node.
    pub dst_node: u32,
    /// Destination endpoint.
    pub dst_ep: u32,
    /// The bytes (NULL when `len` is 0).
    pub data: *const c_void,
    /// How many.
    pub len: usize,
}

/// Called by `wyvern_recv_many` for each message, in order: `data` holds
/// `len` bytes, readable only during the call. It must not call wyvern
/// functions on the same client (they fail with `WYVERN_EBUSY`).
#[allow(non_camel_case_types)]
pub type wyvern_recv_fn = Option<
    unsafe extern "C" fn(
        ctx: *mut c_void,
        src_node: u32,
        src_ep: u32,
        data: *const c_void,
        len: usize,
    ),
>;

/// A failed call: its code and the detail for `wyvern_last_error`.
pub(crate) struct Fail {
    code: c_int,
    msg: String,
}

impl Fail {
    fn new(code: c_int, msg: impl Into<String>) -> Fail {
        Fail {
            code,
            msg: msg.into(),
        }
    }
}

fn status_code(s: Status) -> c_int {
    match s {
        Status::Ok => WYVERN_OK,
        Status::UnknownEndpoint => WYVERN_EUNKNOWN_ENDPOINT,
        Status::PeerLost => WYVERN_EPEER_LOST,
        Status::UnknownNode => WYVERN_EUNKNOWN_NODE,
        Status::BadRequest => WYVERN_EPROTO,
        Status::NoMemory => WYVERN_ENOMEM,
        Status::TooLarge => WYVERN_ETOOLARGE,
        Status::EndpointClosed => WYVERN_EDEST_CLOSED,
    }
}

impl From<client::Error> for Fail {
    fn from(e: client::Error) -> Fail {
        use client::Error as E;
        let code = match &e {
            E::Connect { .. } | E::WrongAgent { .. } => WYVERN_ECONNECT,
            E::PermissionDenied { .. } => WYVERN_EREFUSED,
            E::Refused(_) => WYVERN_EREFUSED,
            E::Protocol(_) | E::Pool(_) | E::Io(_) => WYVERN_EPROTO,
            E::WouldBlock => WYVERN_EAGAIN,
            E::Timeout => WYVERN_ETIMEDOUT,
            E::Send(s) => status_code(*s),
            E::AgentGone => WYVERN_EAGENT_GONE,
            E::TooLarge { .. } => WYVERN_ETOOLARGE,
            E::Closed => WYVERN_ECLOSED,
        };
        // The whole chain of causes: the detail a user needs.
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            src = s.source();
        }
        Fail { code, msg }
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(msg: String) {
    let c = CString::new(msg.replace('\0', "\\0")).unwrap_or_default();
    let _ = LAST_ERROR.try_with(|l| *l.borrow_mut() = c);
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// Run the body of an exported function: a failure becomes its code (and
/// this thread's last error), a panic becomes `WYVERN_EINTERNAL`.
fn ffi(name: &str, f: impl FnOnce() -> Result<c_int, Fail>) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(code)) => code,
        Ok(Err(fail)) => {
            set_last_error(format!("{name}: {}", fail.msg));
            fail.code
        }
        Err(p) => {
            let text = panic_text(&*p);
            let _ = catch_unwind(AssertUnwindSafe(|| {
                set_last_error(format!("{name}: internal error: {text}"))
            }));
            WYVERN_EINTERNAL
        }
    }
}

/// A handle's id (the pointer's value; never dereferenced).
fn id<T>(h: *const T) -> u64 {
    h as usize as u64
}

/// The handle for an id.
fn handle<T>(id: u64) -> *mut T {
    std::ptr::without_provenance_mut(id as usize)
}

fn nonnull<T>(p: *const T, what: &str) -> Result<(), Fail> {
    if p.is_null() {
        Err(Fail::new(WYVERN_EINVAL, format!("{what} is NULL")))
    } else {
        Ok(())
    }
}

/// The longest wait: "forever" in practice (a waiting client wakes every
/// 100 ms anyway to look at its agent).
const FOREVER: Duration = Duration::from_secs(100 * 365 * 86400);

fn timeout(us: i64) -> Duration {
    if us < 0 {
        FOREVER
    } else {
        Duration::from_micros(us as u64).min(FOREVER)
    }
}

/// # Safety
/// `p` is NULL or points to a NUL-terminated string that stays valid and
/// unchanged for `'a`.
unsafe fn c_str<'a>(p: *const c_char, what: &str) -> Result<&'a CStr, Fail> {
    nonnull(p, what)?;
    // SAFETY: not NULL (checked), and the caller promises a NUL-terminated
    // string valid for 'a.
    Ok(unsafe { CStr::from_ptr(p) })
}

/// Write `v` to an out-parameter already checked to be non-NULL.
///
/// # Safety
/// `p` is non-NULL, aligned and valid for a write of `T`.
unsafe fn put<T>(p: *mut T, v: T) {
    debug_assert!(!p.is_null());
    // SAFETY: the caller's promise.
    unsafe { p.write(v) }
}

/// How many handles (clients, endpoints, closed endpoints, messages) this
/// process holds. For tests: a detach leaves none of its client's behind
/// (feature `testing`).
#[cfg(feature = "testing")]
pub fn live_handles() -> usize {
    registry::live_handles()
}

// ----------------------------------------------------------------- clients

/// Attach to the agent whose control socket is `socket_path`; `name` (may be
/// NULL) shows in `wyvern stat`. On success `*out_client` is the new client.
///
/// # Safety
/// `socket_path` and `name` are NULL or NUL-terminated strings;
/// `out_client` is NULL or valid for a write of a pointer.
#[no_mangle]
pub unsafe extern "C" fn wyvern_attach(
    socket_path: *const c_char,
    name: *const c_char,
    out_client: *mut *mut wyvern_client,
) -> c_int {
    ffi("wyvern_attach", || {
        nonnull(out_client, "out_client")?;
        // SAFETY: the caller's promise on `socket_path`.
        let path = unsafe { c_str(socket_path, "socket_path") }?;
        let name = if name.is_null() {
            "wyvern-c".to_string()
        } else {
            // SAFETY: the caller's promise on `name`.
            unsafe { c_str(name, "name") }?
                .to_string_lossy()
                .into_owned()
        };
        let client = Client::attach(OsStr::from_bytes(path.to_bytes()), &name)?;
        let (cid, _) = registry::add_client(ClientState {
            client,
            eps: Default::default(),
            msgs: Default::default(),
            bufs: Default::default(),
            errors: Default::default(),
        });
        // SAFETY: checked non-NULL; the caller's promise otherwise.
        unsafe { put(out_client, handle(cid)) };
        Ok(WYVERN_OK)
    })
}

/// Leave the agent: closes every endpoint of the client and releases every
/// message not yet released (their data pointers become invalid). The
/// client's handles, and its endpoints' and messages', are invalid
/// afterwards. Succeeds also when the agent is gone.
#[no_mangle]
pub extern "C" fn wyvern_detach(client: *mut wyvern_client) -> c_int {
    ffi("wyvern_detach", || {
        let st = registry::take_client(id(client))?;
        let ClientState {
            client,
            eps,
            msgs,
            bufs,
            errors: _,
        } = st;
        // Messages, buffers and endpoints first: they return their blocks
        // through the client's rings before it leaves.
        drop(msgs);
        drop(bufs);
        drop(eps);
        client.detach()?;
        Ok(WYVERN_OK)
    })
}

/// This client's node id.
///
/// # Safety
/// `out_node` is NULL or valid for a write of a `uint32_t`.
#[no_mangle]
pub unsafe extern "C" fn wyvern_node_id(client: *mut wyvern_client, out_node: *mut u32) -> c_int {
    ffi("wyvern_node_id", || {
        nonnull(out_node, "out_node")?;
        let n = registry::with(id(client), Kind::Client, |_, st| Ok(st.client.node()))?;
        // SAFETY: checked non-NULL; the caller's promise otherwise.
        unsafe { put(out_node, n) };
        Ok(WYVERN_OK)
    })
}

/// How many nodes the job has (node ids are `0 .. count`).
///
/// # Safety
/// `out_count` is NULL or valid for a write of a `uint32_t`.
#[no_mangle]
pub unsafe extern "C" fn wyvern_node_count(
    client: *mut wyvern_client,
    out_count: *mut u32,
) -> c_int {
    ffi("wyvern_node_count", || {
        nonnull(out_count, "out_count")?;
        let n = registry::with(id(client), Kind::Client, |_, st| Ok(st.client.nodes()))?;
        // SAFETY: checked non-NULL; the caller's promise otherwise.
        unsafe { put(out_count, n) };
        Ok(WYVERN_OK)
    })
}

/// The largest message that travels inline through the rings; larger ones
/// go through pool blocks and are received zero-copy by `wyvern_recv_zc`.
///
/// # Safety
/// `out_bytes` is NULL or valid for a write of a `size_t`.
#[no_mangle]
pub unsafe extern "C" fn wyvern_eager_max(
    client: *mut wyvern_client,
    out_bytes: *mut usize,
) -> c_int {
    ffi("wyvern_eager_max", || {
        nonnull(out_bytes, "out_bytes")?;
        let n = registry::with(id(client), Kind::Client, |_, st| Ok(st.client.eager_max()))?;
        // SAFETY: checked non-NULL; the caller's promise otherwise.
        unsafe { put(out_bytes, n) };
        Ok(WYVERN_OK)
    })
}

/// Take the oldest failure of a `WYVERN_BUFFERED` send reported since the
/// last call. Returns 1 and fills `*out` when there was one, 0 when there
/// is none, or a negative error code.
///
/// # Safety
/// `out` is NULL or valid for a write of a `wyvern_async_error`.
#[no_mangle]
pub unsafe extern "C" fn wyvern_take_error(
    client: *mut wyvern_client,
    out: *mut wyvern_async_error,
) -> c_int {
    ffi("wyvern_take_error", || {
        nonnull(out, "out")?;
        let e = registry::with(id(client), Kind::Client, |_, st| {
            if st.errors.is_empty() {
                st.errors.extend(st.client.take_errors());
            }
            Ok(st.errors.pop_front())
        })?;
        let Some(e) = e else { return Ok(0) };
        let v = wyvern_async_error {
            cookie: e.cookie,
            status: status_code(e.status),
            node: e.node.unwrap_or(WYVERN_NO_NODE),
        };
        // SAFETY: checked non-NULL; the caller's promise otherwise.
        unsafe { put(out, v) };
        Ok(1)
    })
}

// --------------------------------------------------------------- endpoints

/// Open endpoint `id` (or one the agent picks: `WYVERN_ANY`) on this
/// client's node. `wyvern_endpoint_id` tells the id.
///
/// # Safety
/// `out_ep` is NULL or valid for a write of a pointer.
#[no_mangle]
pub unsafe extern "C" fn wyvern_endpoint_open(
    client: *mut wyvern_client,
    id_or_any: u32,
    out_ep: *mut *mut wyvern_endpoint,
) -> c_int {
    ffi("wyvern_endpoint_open", || {
        nonnull(out_ep, "out_ep")?;
        let eid = registry::with(id(client), Kind::Client, |slot, st| {
            let ep = st
                .client
                .open_endpoint((id_or_any != WYVERN_ANY).then_some(id_or_any))?;
            let eid = registry::add(Kind::Endpoint, slot);
            st.eps.insert(eid, EpState { ep, pending: None });
            Ok(eid)
        })?;
        // SAFETY: checked non-NULL; the caller's promise otherwise.
        unsafe { put(out_ep, handle(eid)) };
        Ok(WYVERN_OK)
    })
}

/// Close an endpoint; messages still queued for it are dropped. Messages
/// already received through `wyvern_recv_zc` stay valid until released.
/// Using the handle afterwards gives `WYVERN_ECLOSED` (until the client
/// detaches, then `WYVERN_EBADHANDLE`).
#[no_mangle]
pub extern "C" fn wyvern_endpoint_close(ep: *mut wyvern_endpoint) -> c_int {
    ffi("wyvern_endpoint_close", || {
        let eid = id(ep);
        registry::with(eid, Kind::Endpoint, |_, st| {
            let e = st
                .eps
                .remove(&eid)
                .ok_or_else(|| Fail::new(WYVERN_EBADHANDLE, "unknown endpoint handle"))?;
            registry::retag(eid, Kind::ClosedEndpoint);
            drop(e.pending);
            e.ep.close()?;
            Ok(WYVERN_OK)
        })
    })
}

/// This endpoint's id (its address is this node's id and this id).
///
/// # Safety
/// `out_id` is NULL or valid for a write of a `uint32_t`.
#[no_mangle]
pub unsafe extern "C" fn wyvern_endpoint_id(ep: *mut wyvern_endpoint, out_id: *mut u32) -> c_int {
    ffi("wyvern_endpoint_id", || {
        nonnull(out_id, "out_id")?;
        let eid = id(ep);
        let n = with_ep(eid, |e| Ok(e.ep.id()))?;
        // SAFETY: checked non-NULL; the caller's promise otherwise.
        unsafe { put(out_id, n) };
        Ok(WYVERN_OK)
    })
}

fn with_ep<R>(eid: u64, f: impl FnOnce(&mut EpState) -> Result<R, Fail>) -> Result<R, Fail> {
    registry::with(eid, Kind::Endpoint, |_, st| {
        let e = st
            .eps
            .get_mut(&eid)
            .ok_or_else(|| Fail::new(WYVERN_EBADHANDLE, "unknown endpoint handle"))?;
        f(e)
    })
}

// -------------------------------------------------------------------- send

/// Send `len` bytes at `buf` to endpoint `dst_ep` of node `dst_node`
/// (`buf` may be NULL when `len` is 0). `flags` is `WYVERN_BUFFERED` or
/// `WYVERN_DELIVERED`. Waits up to `timeout_us` microseconds for room (and,
/// `WYVERN_DELIVERED`, for the delivery): `WYVERN_FOREVER` waits as long as
/// it takes, 0 tries once. A message larger than `wyvern_eager_max` first
/// gets a pool block from the agent (a round trip): give it a timeout.
///
/// # Safety
/// `buf` is NULL or valid for reads of `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn wyvern_send(
    ep: *mut wyvern_endpoint,
    dst_node: u32,
    dst_ep: u32,
    buf: *const c_void,
    len: usize,
    flags: u32,
    timeout_us: i64,
) -> c_int {
    // SAFETY: the caller's promise, passed on; NULL `out_cookie` is allowed.
    unsafe {
        wyvern_send_ex(
            ep,
            dst_node,
            dst_ep,
            buf,
            len,
            flags,
            timeout_us,
            std::ptr::null_mut(),
        )
    }
}

/// `wyvern_send`, also storing the send's cookie in `*out_cookie` (when not
/// NULL): the cookie names this send in `wyvern_take_error`.
///
/// # Safety
/// `buf` is NULL or valid for reads of `len` bytes; `out_cookie` is NULL or
/// valid for a write of a `uint64_t`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn wyvern_send_ex(
    ep: *mut wyvern_endpoint,
    dst_node: u32,
    dst_ep: u32,
    buf: *const c_void,
    len: usize,
    flags: u32,
    timeout_us: i64,
    out_cookie: *mut u64,
) -> c_int {
    ffi("wyvern_send", || {
        let mode = send_mode(flags)?;
        let data: &[u8] = if len == 0 {
            &[]
        } else {
            nonnull(buf, "buf (with len > 0)")?;
            if len > isize::MAX as usize {
                return Err(Fail::new(
                    WYVERN_EINVAL,
                    format!("len {len} is not a length"),
                ));
            }
            // SAFETY: `buf` is not NULL (checked), `len` fits an isize
            // (checked), and the caller promises `len` readable bytes that
            // do not change during the call.
            unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) }
        };
        let cookie = with_ep(id(ep), |e| {
            Ok(e.ep.send(dst_node, dst_ep, data, mode, timeout(timeout_us))?)
        })?;
        if !out_cookie.is_null() {
            // SAFETY: not NULL; the caller's promise otherwise.
            unsafe { put(out_cookie, cookie) };
        }
        Ok(WYVERN_OK)
    })
}

/// Send `n` messages in order, `WYVERN_BUFFERED`, paying one publication of
/// the submission ring and at most one wake-up of the agent per run of small
/// messages that fits the ring at once (`wyvern_send` pays them per message).
/// Messages larger than `wyvern_eager_max` are sent as `wyvern_send` sends
/// them, in their place. Waits up to `timeout_us` in all for room. Stores how
/// many were submitted (from the first) in `*out_sent` (may be NULL):
/// `WYVERN_OK` when all `n` were; `WYVERN_EAGAIN` when the time ran out
/// before (send the rest again). Failures after submission come from
/// `wyvern_take_error`.
///
/// # Safety
/// `msgs` is valid for reads of `n` `wyvern_out`s, each `data` valid for
/// reads of its `len` bytes (or NULL with `len` 0); `out_sent` is NULL or
/// valid for a write of a `size_t`.
#[no_mangle]
pub unsafe extern "C" fn wyvern_send_many(
    ep: *mut wyvern_endpoint,
    msgs: *const wyvern_out,
    n: usize,
    out_sent: *mut usize,
    timeout_us: i64,
) -> c_int {
    ffi("wyvern_send_many", || {
        if n == 0 {
            if !out_sent.is_null() {
                // SAFETY: not NULL; the caller's promise otherwise.
                unsafe { put(out_sent, 0) };
            }
            return Ok(WYVERN_OK);
        }
        nonnull(msgs, "msgs (with n > 0)")?;
        if n > isize::MAX as usize / std::mem::size_of::<wyvern_out>() {
            return Err(Fail::new(WYVERN_EINVAL, format!("n {n} is not a count")));
        }
        // SAFETY: not NULL (checked), the count fits (checked), and the
        // caller promises `n` readable `wyvern_out`s that do not change
        // during the call.
        let raw = unsafe { std::slice::from_raw_parts(msgs, n) };
        let mut batch = Vec::with_capacity(n);
        for (k, m) in raw.iter().enumerate() {
            let data: &[u8] = if m.len == 0 {
                &[]
            } else {
                nonnull(m.data, &format!("msgs[{k}].data (with len > 0)"))?;
                if m.len > isize::MAX as usize {
                    return Err(Fail::new(
                        WYVERN_EINVAL,
                        format!("msgs[{k}].len {} is not a length", m.len),
                    ));
                }
                // SAFETY: not NULL (checked), the length fits an isize
                // (checked), and the caller promises `len` readable bytes
                // that do not change during the call.
                unsafe { std::slice::from_raw_parts(m.data.cast::<u8>(), m.len) }
            };
            batch.push(client::Outgoing {
                dst_node: m.dst_node,
                dst_ep: m.dst_ep,
                data,
            });
        }
        let sent = with_ep(id(ep), |e| {
            match e.ep.send_many(&batch, timeout(timeout_us)) {
                Ok(k) => Ok(k),
                Err(client::Error::WouldBlock) => Ok(0),
                Err(err) => Err(err.into()),
            }
        })?;
        if !out_sent.is_null() {
            // SAFETY: not NULL; the caller's promise otherwise.
            unsafe { put(out_sent, sent) };
        }
        if sent < n {
            return Err(Fail::new(
                WYVERN_EAGAIN,
                format!("{sent} of {n} messages submitted before the timeout"),
            ));
        }
        Ok(WYVERN_OK)
    })
}

fn send_mode(flags: u32) -> Result<Mode, Fail> {
    match flags {
        WYVERN_BUFFERED => Ok(Mode::Buffered),
        WYVERN_DELIVERED => Ok(Mode::Delivered),
        f => Err(Fail::new(
            WYVERN_EINVAL,
            format!("flags {f:#x}: expected WYVERN_BUFFERED or WYVERN_DELIVERED"),
        )),
    }
}

// ------------------------------------------------------- zero-copy send

/// Get a pool block of `len` bytes to fill in place and send with
/// `wyvern_send_buf`: no copy on this side (`wyvern_send` of a message
/// larger than `wyvern_eager_max` allocates one and copies into it). Asks
/// the agent (a round trip); waits up to `timeout_us` while the pool, or
/// this client's share of it, is full (`WYVERN_EAGAIN` when it stays full,
/// `WYVERN_ETOOLARGE` when it can never hold `len`). Allocate ahead and
/// reuse the pattern: a block is consumed by its send.
///
/// # Safety
/// `out_buf` is NULL or valid for a write of a pointer.
#[no_mangle]
pub unsafe extern "C" fn wyvern_alloc(
    client: *mut wyvern_client,
    len: usize,
    timeout_us: i64,
    out_buf: *mut *mut wyvern_buf,
) -> c_int {
    ffi("wyvern_alloc", || {
        nonnull(out_buf, "out_buf")?;
        let bid = registry::with(id(client), Kind::Client, |slot, st| {
            let b = st.client.alloc(len, timeout(timeout_us))?;
            let bid = registry::add(Kind::Buf, slot);
            st.bufs.insert(bid, b);
            Ok(bid)
        })?;
        // SAFETY: checked non-NULL; the caller's promise otherwise.
        unsafe { put(out_buf, handle(bid)) };
        Ok(WYVERN_OK)
    })
}

fn with_buf<R>(buf: *mut wyvern_buf, f: impl FnOnce(&mut SendBuf) -> R) -> Result<R, Fail> {
    let bid = id(buf);
    registry::with(bid, Kind::Buf, |_, st| {
        st.bufs
            .get_mut(&bid)
            .map(f)
            .ok_or_else(|| Fail::new(WYVERN_EBADHANDLE, "unknown buffer handle"))
    })
}

/// Where to write a buffer's bytes (`wyvern_buf_len` of them), valid until
/// the buffer is sent or freed or its client detaches. NULL for an invalid
/// handle (see `wyvern_last_error`).
#[no_mangle]
pub extern "C" fn wyvern_buf_data(buf: *mut wyvern_buf) -> *mut c_void {
    static mut EMPTY: u8 = 0;
    let mut ptr = std::ptr::null_mut();
    ffi("wyvern_buf_data", || {
        ptr = with_buf(buf, |b| {
            if b.is_empty() {
                // Never written through: a caller may write 0 bytes.
                (&raw mut EMPTY).cast::<c_void>()
            } else {
                b.as_mut_ptr().cast::<c_void>()
            }
        })?;
        Ok(WYVERN_OK)
    });
    ptr
}

/// A buffer's length in bytes, or a negative error code for an invalid
/// handle (one already sent or freed: `WYVERN_EBADHANDLE`).
#[no_mangle]
pub extern "C" fn wyvern_buf_len(buf: *mut wyvern_buf) -> i64 {
    let mut len = 0i64;
    let rc = ffi("wyvern_buf_len", || {
        len = with_buf(buf, |b| b.len() as i64)?;
        Ok(WYVERN_OK)
    });
    if rc < 0 {
        rc.into()
    } else {
        len
    }
}

/// Give an unsent buffer back to the agent. Its handle and data pointer
/// are invalid afterwards.
#[no_mangle]
pub extern "C" fn wyvern_buf_free(buf: *mut wyvern_buf) -> c_int {
    ffi("wyvern_buf_free", || {
        let bid = id(buf);
        registry::with(bid, Kind::Buf, |_, st| {
            let b = st
                .bufs
                .remove(&bid)
                .ok_or_else(|| Fail::new(WYVERN_EBADHANDLE, "unknown buffer handle"))?;
            registry::remove(bid);
            drop(b);
            Ok(WYVERN_OK)
        })
    })
}

/// Send a buffer from `wyvern_alloc` of the same client, filled in place,
/// to endpoint `dst_ep` of node `dst_node`: the agent takes the pool block
/// as it is (no copy). `flags` and `timeout_us` as `wyvern_send`;
/// `out_cookie` (may be NULL) as `wyvern_send_ex`. The buffer is consumed
/// (its handle and data pointer invalid) by every return except
/// `WYVERN_EAGAIN` (no room in the ring: the buffer is still yours, send it
/// again or free it), `WYVERN_EINVAL` (bad flags, or a buffer of another
/// client), `WYVERN_EBADHANDLE` and `WYVERN_ECLOSED`, which leave it as it
/// was.
///
/// # Safety
/// `out_cookie` is NULL or valid for a write of a `uint64_t`.
#[no_mangle]
pub unsafe extern "C" fn wyvern_send_buf(
    ep: *mut wyvern_endpoint,
    dst_node: u32,
    dst_ep: u32,
    buf: *mut wyvern_buf,
    flags: u32,
    timeout_us: i64,
    out_cookie: *mut u64,
) -> c_int {
    ffi("wyvern_send_buf", || {
        let mode = send_mode(flags)?;
        let (eid, bid) = (id(ep), id(buf));
        let bslot = registry::lookup(bid, Kind::Buf)?;
        let cookie = registry::with(eid, Kind::Endpoint, |slot, st| {
            if !std::sync::Arc::ptr_eq(slot, &bslot) {
                return Err(Fail::new(
                    WYVERN_EINVAL,
                    "the buffer was allocated by another client than the endpoint's",
                ));
            }
            let e = st
                .eps
                .get(&eid)
                .ok_or_else(|| Fail::new(WYVERN_EBADHANDLE, "unknown endpoint handle"))?;
            let b = st
                .bufs
                .remove(&bid)
                .ok_or_else(|| Fail::new(WYVERN_EBADHANDLE, "unknown buffer handle"))?;
            match e
                .ep
                .try_send_buf(dst_node, dst_ep, b, mode, timeout(timeout_us))
            {
                Ok(c) => {
                    registry::remove(bid);
                    Ok(c)
                }
                Err((err, Some(b))) => {
                    st.bufs.insert(bid, b);
                    Err(err.into())
                }
                Err((err, None)) => {
                    registry::remove(bid);
                    Err(err.into())
                }
            }
        })?;
        if !out_cookie.is_null() {
            // SAFETY: not NULL; the caller's promise otherwise.
            unsafe { put(out_cookie, cookie) };
        }
        Ok(WYVERN_OK)
    })
}

// ----------------------------------------------------------------- receive

/// The next message of an endpoint: the one a too-small buffer left first
/// in line, else one from the ring (timeout 0: only if one is there).
fn next_message(e: &mut EpState, timeout_us: i64) -> Result<Message, Fail> {
    if let Some(m) = e.pending.take() {
        return Ok(m);
    }
    if timeout_us == 0 {
        return e
            .ep
            .try_recv()?
            .ok_or_else(|| Fail::new(WYVERN_EAGAIN, "no message waiting"));
    }
    Ok(e.ep.recv(timeout(timeout_us))?)
}

/// Receive the next message into `buf` (capacity `cap` bytes), storing its
/// length in `*out_len`. Waits up to `timeout_us` (see `wyvern_send`);
/// nothing there: `WYVERN_EAGAIN` (timeout 0) or `WYVERN_ETIMEDOUT`. When
/// the message is longer than `cap`, returns `WYVERN_ENOSPC` with the
/// needed length in `*out_len` and keeps the message first in line: call
/// again with a large enough buffer. `buf` may be NULL when `cap` is 0.
///
/// # Safety
/// `buf` is NULL or valid for writes of `cap` bytes; `out_len` is NULL or
/// valid for a write of a `size_t`.
#[no_mangle]
pub unsafe extern "C" fn wyvern_recv(
    ep: *mut wyvern_endpoint,
    buf: *mut c_void,
    cap: usize,
    out_len: *mut usize,
    timeout_us: i64,
) -> c_int {
    // SAFETY: the caller's promise, passed on; the source out-pointers may
    // be NULL.
    unsafe {
        wyvern_recv_from(
            ep,
            buf,
            cap,
            out_len,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            timeout_us,
        )
    }
}

/// `wyvern_recv`, also telling the sender's node and endpoint (each
/// out-pointer may be NULL).
///
/// # Safety
/// `buf` is NULL or valid for writes of `cap` bytes; `out_len`,
/// `out_src_node` and `out_src_ep` are NULL or valid for a write of their
/// type.
#[no_mangle]
pub unsafe extern "C" fn wyvern_recv_from(
    ep: *mut wyvern_endpoint,
    buf: *mut c_void,
    cap: usize,
    out_len: *mut usize,
    out_src_node: *mut u32,
    out_src_ep: *mut u32,
    timeout_us: i64,
) -> c_int {
    ffi("wyvern_recv", || {
        nonnull(out_len, "out_len")?;
        if cap > 0 {
            nonnull(buf, "buf (with cap > 0)")?;
        }
        if cap > isize::MAX as usize {
            return Err(Fail::new(
                WYVERN_EINVAL,
                format!("cap {cap} is not a length"),
            ));
        }
        with_ep(id(ep), |e| {
            let m = next_message(e, timeout_us)?;
            let data = m.data();
            let len = data.len();
            if len > cap {
                e.pending = Some(m);
                // SAFETY: checked non-NULL; the caller's promise otherwise.
                unsafe { put(out_len, len) };
                return Err(Fail::new(
                    WYVERN_ENOSPC,
                    format!("message of {len} bytes, buffer of {cap}"),
                ));
            }
            if len > 0 {
                // SAFETY: `buf` is not NULL (cap >= len > 0, checked), the
                // caller promises `cap` writable bytes, and `data` is our own
                // memory (a Vec or a pool block owned by this client), which
                // C cannot be writing through `buf`.
                unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), buf.cast::<u8>(), len) };
            }
            // SAFETY: checked non-NULL; the caller's promise otherwise.
            unsafe { put(out_len, len) };
            if !out_src_node.is_null() {
                // SAFETY: not NULL; the caller's promise otherwise.
                unsafe { put(out_src_node, m.src_node) };
            }
            if !out_src_ep.is_null() {
                // SAFETY: not NULL; the caller's promise otherwise.
                unsafe { put(out_src_ep, m.src_ep) };
            }
            Ok(WYVERN_OK)
        })
    })
}

/// Receive the next message without copying it: `*out_msg` is a handle to
/// read with `wyvern_msg_data`, `wyvern_msg_len` and `wyvern_msg_src`, and
/// to give back with `wyvern_msg_release`. A message larger than
/// `wyvern_eager_max` is a view of the pool block it arrived in; the block
/// returns to the agent only when released (or when the client detaches), so
/// release messages promptly. Timeouts and errors as `wyvern_recv`.
///
/// # Safety
/// `out_msg` is NULL or valid for a write of a pointer.
#[no_mangle]
pub unsafe extern "C" fn wyvern_recv_zc(
    ep: *mut wyvern_endpoint,
    out_msg: *mut *mut wyvern_msg,
    timeout_us: i64,
) -> c_int {
    ffi("wyvern_recv_zc", || {
        nonnull(out_msg, "out_msg")?;
        let eid = id(ep);
        let mid = registry::with(eid, Kind::Endpoint, |slot, st| {
            let e = st
                .eps
                .get_mut(&eid)
                .ok_or_else(|| Fail::new(WYVERN_EBADHANDLE, "unknown endpoint handle"))?;
            let m = next_message(e, timeout_us)?;
            let mid = registry::add(Kind::Msg, slot);
            st.msgs.insert(mid, m);
            Ok(mid)
        })?;
        // SAFETY: checked non-NULL; the caller's promise otherwise.
        unsafe { put(out_msg, handle(mid)) };
        Ok(WYVERN_OK)
    })
}

/// Hand up to `max` waiting messages to `f` (with `ctx`), in order, giving
/// their ring slots back to the agent once for the batch; waits up to
/// `timeout_us` for the first (see `wyvern_send`). Stores how many in
/// `*out_n` (may be NULL). None: `WYVERN_EAGAIN` (timeout 0) or
/// `WYVERN_ETIMEDOUT`. A message's bytes are readable only during its call
/// of `f` (a large message's pool block returns to the agent after it).
///
/// # Safety
/// `f` is a function safe to call with `ctx` and the arguments described
/// at `wyvern_recv_fn`; `out_n` is NULL or valid for a write of a `size_t`.
#[no_mangle]
pub unsafe extern "C" fn wyvern_recv_many(
    ep: *mut wyvern_endpoint,
    max: usize,
    f: wyvern_recv_fn,
    ctx: *mut c_void,
    out_n: *mut usize,
    timeout_us: i64,
) -> c_int {
    ffi("wyvern_recv_many", || {
        let Some(f) = f else {
            return Err(Fail::new(WYVERN_EINVAL, "f is NULL"));
        };
        let call = |src_node: u32, src_ep: u32, data: &[u8]| {
            // SAFETY: the caller's promise about `f` and `ctx`; `data` is our
            // own memory, valid for `len` bytes during the call.
            unsafe { f(ctx, src_node, src_ep, data.as_ptr().cast(), data.len()) }
        };
        let got = with_ep(id(ep), |e| {
            let mut got = 0;
            // One held back by `wyvern_recv` (too large for its buffer) or
            // fetched by `wyvern_poll` comes first.
            if max > 0 {
                if let Some(m) = e.pending.take() {
                    call(m.src_node, m.src_ep, m.data());
                    got += 1;
                }
            }
            let rest = max - got;
            if rest == 0 {
                return Ok(got);
            }
            let mut each = |m: &client::MessageRef<'_>| call(m.src_node, m.src_ep, m.data);
            let r = if got > 0 || timeout_us == 0 {
                e.ep.try_recv_many(rest, &mut each)
            } else {
                e.ep.recv_many(rest, timeout(timeout_us), &mut each)
            };
            match r {
                Ok(k) => Ok(got + k),
                Err(_) if got > 0 => Ok(got),
                Err(err) => Err(err.into()),
            }
        })?;
        if !out_n.is_null() {
            // SAFETY: not NULL; the caller's promise otherwise.
            unsafe { put(out_n, got) };
        }
        if got == 0 && max > 0 {
            return Err(Fail::new(WYVERN_EAGAIN, "no message waiting"));
        }
        Ok(WYVERN_OK)
    })
}

/// The descriptor to wait on in an event loop (poll, epoll, libuv, ...) for
/// `ep`'s next message, stored in `*out_fd`; use `wyvern_arm` before the
/// wait and `wyvern_disarm` after. It is the client's (shared by its
/// endpoints: a wake-up may be for another one; receive with timeout 0 and
/// arm again when nothing came), owned by the client: do not close it.
///
/// # Safety
/// `out_fd` is NULL or valid for a write of an `int`.
#[no_mangle]
pub unsafe extern "C" fn wyvern_wait_fd(ep: *mut wyvern_endpoint, out_fd: *mut c_int) -> c_int {
    ffi("wyvern_wait_fd", || {
        nonnull(out_fd, "out_fd")?;
        let fd = with_ep(id(ep), |e| {
            use std::os::fd::AsRawFd;
            Ok(e.ep.wait_fd().as_raw_fd())
        })?;
        // SAFETY: checked non-NULL; the caller's promise otherwise.
        unsafe { put(out_fd, fd) };
        Ok(WYVERN_OK)
    })
}

/// Before waiting on `wyvern_wait_fd`'s descriptor: asks the agent to make
/// it readable for anything new. Returns 1: armed, wait, then
/// `wyvern_disarm`; 0: a message is already waiting (receive now, nothing
/// armed); or a negative error code.
#[no_mangle]
pub extern "C" fn wyvern_arm(ep: *mut wyvern_endpoint) -> c_int {
    ffi("wyvern_arm", || {
        with_ep(id(ep), |e| {
            if e.pending.is_some() {
                return Ok(0);
            }
            Ok(c_int::from(e.ep.arm()?))
        })
    })
}

/// After the wait on `wyvern_wait_fd`'s descriptor (it was readable, or the
/// wait ended): the agent need not make it readable any more, and what it
/// signalled is taken.
#[no_mangle]
pub extern "C" fn wyvern_disarm(ep: *mut wyvern_endpoint) -> c_int {
    ffi("wyvern_disarm", || {
        with_ep(id(ep), |e| {
            e.ep.disarm();
            Ok(WYVERN_OK)
        })
    })
}

/// Whether a message is ready, without waiting: 1 if one is (it is fetched
/// from the ring and is the next one `wyvern_recv*` returns, at once), 0 if
/// none, or a negative error code.
#[no_mangle]
pub extern "C" fn wyvern_poll(ep: *mut wyvern_endpoint) -> c_int {
    ffi("wyvern_poll", || {
        with_ep(id(ep), |e| {
            if e.pending.is_none() {
                e.pending = e.ep.try_recv()?;
            }
            Ok(c_int::from(e.pending.is_some()))
        })
    })
}

fn with_msg<R>(msg: *mut wyvern_msg, f: impl FnOnce(&Message) -> R) -> Result<R, Fail> {
    let mid = id(msg);
    registry::with(mid, Kind::Msg, |_, st| {
        st.msgs
            .get(&mid)
            .map(f)
            .ok_or_else(|| Fail::new(WYVERN_EBADHANDLE, "unknown message handle"))
    })
}

/// A message's bytes (`wyvern_msg_len` of them), valid until the message is
/// released or its client detaches. NULL for an invalid handle (see
/// `wyvern_last_error`); never NULL for a valid one, even of 0 bytes.
#[no_mangle]
pub extern "C" fn wyvern_msg_data(msg: *mut wyvern_msg) -> *const c_void {
    static EMPTY: u8 = 0;
    let mut ptr = std::ptr::null();
    ffi("wyvern_msg_data", || {
        ptr = with_msg(msg, |m| {
            let d = m.data();
            if d.is_empty() {
                (&raw const EMPTY).cast::<c_void>()
            } else {
                d.as_ptr().cast::<c_void>()
            }
        })?;
        Ok(WYVERN_OK)
    });
    ptr
}

/// A message's length in bytes, or a negative error code for an invalid
/// handle.
#[no_mangle]
pub extern "C" fn wyvern_msg_len(msg: *mut wyvern_msg) -> i64 {
    let mut len = 0i64;
    let rc = ffi("wyvern_msg_len", || {
        len = with_msg(msg, |m| m.data().len() as i64)?;
        Ok(WYVERN_OK)
    });
    if rc < 0 {
        rc.into()
    } else {
        len
    }
}

/// The sending node and endpoint of a message (each out-pointer may be
/// NULL).
///
/// # Safety
/// `out_node` and `out_ep` are NULL or valid for a write of a `uint32_t`.
#[no_mangle]
pub unsafe extern "C" fn wyvern_msg_src(
    msg: *mut wyvern_msg,
    out_node: *mut u32,
    out_ep: *mut u32,
) -> c_int {
    ffi("wyvern_msg_src", || {
        let (n, e) = with_msg(msg, |m| (m.src_node, m.src_ep))?;
        if !out_node.is_null() {
            // SAFETY: not NULL; the caller's promise otherwise.
            unsafe { put(out_node, n) };
        }
        if !out_ep.is_null() {
            // SAFETY: not NULL; the caller's promise otherwise.
            unsafe { put(out_ep, e) };
        }
        Ok(WYVERN_OK)
    })
}

/// 1 if the message is a view of a pool block (no copy was made), 0 if it
/// was small enough to travel inline, or a negative error code.
#[no_mangle]
pub extern "C" fn wyvern_msg_zero_copy(msg: *mut wyvern_msg) -> c_int {
    ffi("wyvern_msg_zero_copy", || {
        Ok(c_int::from(with_msg(msg, |m| m.is_zero_copy())?))
    })
}

/// Give a message back (its pool block returns to the agent). Its handle
/// and data pointer are invalid afterwards; releasing twice gives
/// `WYVERN_EBADHANDLE`.
#[no_mangle]
pub extern "C" fn wyvern_msg_release(msg: *mut wyvern_msg) -> c_int {
    ffi("wyvern_msg_release", || {
        let mid = id(msg);
        registry::with(mid, Kind::Msg, |_, st| {
            let m = st
                .msgs
                .remove(&mid)
                .ok_or_else(|| Fail::new(WYVERN_EBADHANDLE, "unknown message handle"))?;
            registry::remove(mid);
            drop(m);
            Ok(WYVERN_OK)
        })
    })
}

// ------------------------------------------------------------------ errors

/// A static description of a `WYVERN_E*` code (or of an unknown one).
#[no_mangle]
pub extern "C" fn wyvern_strerror(code: c_int) -> *const c_char {
    let s: &'static CStr = match code {
        WYVERN_OK => c"success",
        WYVERN_EAGAIN => c"would block: nothing ready, or no room right now",
        WYVERN_ETIMEDOUT => c"timed out",
        WYVERN_EINVAL => c"invalid argument",
        WYVERN_EBADHANDLE => c"invalid or stale handle",
        WYVERN_ECLOSED => c"endpoint closed",
        WYVERN_ENOSPC => c"buffer too small for the message",
        WYVERN_ETOOLARGE => c"message too large",
        WYVERN_EUNKNOWN_ENDPOINT => c"unknown endpoint on the destination node",
        WYVERN_EUNKNOWN_NODE => c"destination node not in the node list",
        WYVERN_EPEER_LOST => c"destination node lost",
        WYVERN_EDEST_CLOSED => c"destination endpoint closed",
        WYVERN_ENOMEM => c"pool has no free block of that size",
        WYVERN_EREFUSED => c"refused by the agent",
        WYVERN_ECONNECT => c"cannot reach the agent",
        WYVERN_EAGENT_GONE => c"the agent is gone",
        WYVERN_EPROTO => c"protocol or I/O error between client and agent",
        WYVERN_EBUSY => c"client in use by another thread",
        WYVERN_EINTERNAL => c"internal error",
        _ => c"unknown wyvern error code",
    };
    s.as_ptr()
}

/// The detail of the last call that failed on this thread (empty if none
/// did): a NUL-terminated string valid until the next failing call on this
/// thread. Successful calls leave it alone.
#[no_mangle]
pub extern "C" fn wyvern_last_error() -> *const c_char {
    catch_unwind(|| {
        LAST_ERROR
            .try_with(|l| l.borrow().as_ptr())
            .unwrap_or(c"".as_ptr())
    })
    .unwrap_or(c"".as_ptr())
}
