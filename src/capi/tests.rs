//! Unit tests of the C API that need no agent: arguments, handles, codes.
//! (With agents: `tests/capi.rs` and the C programs in `tests/c/`.)

use super::*;
use std::ptr::{null, null_mut};

fn last() -> String {
    // SAFETY: wyvern_last_error returns a NUL-terminated string valid until
    // the next failing call on this thread.
    unsafe { CStr::from_ptr(wyvern_last_error()) }
        .to_string_lossy()
        .into_owned()
}

const ALL: [c_int; 19] = [
    WYVERN_OK,
    WYVERN_EAGAIN,
    WYVERN_ETIMEDOUT,
    WYVERN_EINVAL,
    WYVERN_EBADHANDLE,
    WYVERN_ECLOSED,
    WYVERN_ENOSPC,
    WYVERN_ETOOLARGE,
    WYVERN_EUNKNOWN_ENDPOINT,
    WYVERN_EUNKNOWN_NODE,
    WYVERN_EPEER_LOST,
    WYVERN_EDEST_CLOSED,
    WYVERN_ENOMEM,
    WYVERN_EREFUSED,
    WYVERN_ECONNECT,
    WYVERN_EAGENT_GONE,
    WYVERN_EPROTO,
    WYVERN_EBUSY,
    WYVERN_EINTERNAL,
];

#[test]
fn every_code_has_its_own_description() {
    let mut seen = std::collections::HashSet::new();
    for c in ALL {
        // SAFETY: wyvern_strerror returns a static NUL-terminated string.
        let s = unsafe { CStr::from_ptr(wyvern_strerror(c)) }
            .to_str()
            .unwrap();
        assert!(
            !s.starts_with("unknown wyvern"),
            "code {c} has no description"
        );
        assert!(seen.insert(s), "code {c} shares its description {s:?}");
    }
    // SAFETY: as above.
    let s = unsafe { CStr::from_ptr(wyvern_strerror(12345)) };
    assert_eq!(s.to_str().unwrap(), "unknown wyvern error code");
    let mut codes = ALL.to_vec();
    codes.dedup();
    assert_eq!(codes.len(), ALL.len(), "codes are distinct");
}

#[test]
fn null_arguments_are_invalid_not_crashes() {
    let mut c = null_mut();
    // SAFETY: every call gets NULL or valid pointers, as each function
    // allows.
    unsafe {
        assert_eq!(wyvern_attach(null(), null(), &mut c), WYVERN_EINVAL);
        assert!(last().contains("socket_path is NULL"), "{}", last());
        assert_eq!(
            wyvern_attach(c"/nonexistent".as_ptr(), null(), null_mut()),
            WYVERN_EINVAL
        );
        assert!(last().contains("out_client"), "{}", last());
        assert_eq!(wyvern_detach(null_mut()), WYVERN_EINVAL);
        assert!(last().contains("NULL handle"), "{}", last());
        let mut n = 0u32;
        assert_eq!(wyvern_node_id(null_mut(), &mut n), WYVERN_EINVAL);
        assert_eq!(wyvern_poll(null_mut()), WYVERN_EINVAL);
        assert_eq!(wyvern_msg_release(null_mut()), WYVERN_EINVAL);
        assert!(wyvern_msg_data(null_mut()).is_null());
        assert_eq!(wyvern_msg_len(null_mut()), i64::from(WYVERN_EINVAL));
        assert_eq!(wyvern_endpoint_close(null_mut()), WYVERN_EINVAL);
        let mut b = null_mut();
        assert_eq!(wyvern_alloc(null_mut(), 8, 0, &mut b), WYVERN_EINVAL);
        assert!(b.is_null(), "nothing written on failure");
        assert!(wyvern_buf_data(null_mut()).is_null());
        assert_eq!(wyvern_buf_len(null_mut()), i64::from(WYVERN_EINVAL));
        assert_eq!(wyvern_buf_free(null_mut()), WYVERN_EINVAL);
        assert_eq!(
            wyvern_send_buf(null_mut(), 0, 0, null_mut(), WYVERN_BUFFERED, 0, null_mut()),
            WYVERN_EINVAL
        );
    }
    assert_eq!(c, null_mut(), "nothing written on failure");
}

#[test]
fn made_up_handles_are_rejected_without_being_touched() {
    // Values that would crash if dereferenced.
    for v in [1usize, 0x1234, usize::MAX, 0xdead_beef_0000] {
        let ep: *mut wyvern_endpoint = std::ptr::without_provenance_mut(v);
        let cl: *mut wyvern_client = std::ptr::without_provenance_mut(v);
        let msg: *mut wyvern_msg = std::ptr::without_provenance_mut(v);
        let mut out = 0u32;
        let mut len = 0usize;
        let mut buf = [0u8; 8];
        // SAFETY: every call gets valid out-pointers; the handles are bogus on
        // purpose, which the API must detect.
        unsafe {
            assert_eq!(wyvern_endpoint_id(ep, &mut out), WYVERN_EBADHANDLE);
            assert!(last().contains("unknown Endpoint handle"), "{}", last());
            assert_eq!(
                wyvern_send(ep, 0, 0, buf.as_ptr().cast(), 8, WYVERN_BUFFERED, 0),
                WYVERN_EBADHANDLE
            );
            assert_eq!(
                wyvern_recv(ep, buf.as_mut_ptr().cast(), 8, &mut len, 0),
                WYVERN_EBADHANDLE
            );
            assert_eq!(wyvern_node_count(cl, &mut out), WYVERN_EBADHANDLE);
            assert_eq!(wyvern_detach(cl), WYVERN_EBADHANDLE);
            assert_eq!(wyvern_msg_release(msg), WYVERN_EBADHANDLE);
            assert_eq!(wyvern_msg_len(msg), i64::from(WYVERN_EBADHANDLE));
            assert_eq!(wyvern_poll(ep), WYVERN_EBADHANDLE);
            let b: *mut wyvern_buf = std::ptr::without_provenance_mut(v);
            assert!(wyvern_buf_data(b).is_null());
            assert_eq!(wyvern_buf_len(b), i64::from(WYVERN_EBADHANDLE));
            assert_eq!(wyvern_buf_free(b), WYVERN_EBADHANDLE);
            assert_eq!(
                wyvern_send_buf(ep, 0, 0, b, WYVERN_BUFFERED, 0, null_mut()),
                WYVERN_EBADHANDLE
            );
        }
    }
}

#[test]
fn bad_lengths_and_flags_are_invalid() {
    let ep: *mut wyvern_endpoint = std::ptr::without_provenance_mut(0x77);
    let mut len = 0usize;
    // SAFETY: every call gets NULL or valid pointers as allowed; the
    // argument checks come before the handle is looked up.
    unsafe {
        assert_eq!(
            wyvern_send(ep, 0, 0, null(), 5, WYVERN_BUFFERED, 0),
            WYVERN_EINVAL
        );
        assert!(last().contains("buf (with len > 0) is NULL"), "{}", last());
        assert_eq!(
            wyvern_send(ep, 0, 0, c"x".as_ptr().cast(), 1, 7, 0),
            WYVERN_EINVAL
        );
        assert!(last().contains("flags 0x7"), "{}", last());
        assert_eq!(wyvern_recv(ep, null_mut(), 10, &mut len, 0), WYVERN_EINVAL);
        assert_eq!(wyvern_recv(ep, null_mut(), 0, null_mut(), 0), WYVERN_EINVAL);
    }
}

#[test]
fn attach_to_no_agent_says_connect_with_the_cause() {
    let mut c = null_mut();
    // SAFETY: valid strings and out-pointer.
    let rc = unsafe { wyvern_attach(c"/nonexistent/wyvern.sock".as_ptr(), c"t".as_ptr(), &mut c) };
    assert_eq!(rc, WYVERN_ECONNECT);
    let e = last();
    assert!(
        e.contains("/nonexistent/wyvern.sock") && e.contains("No such file"),
        "{e}"
    );
}

#[test]
fn a_panic_becomes_an_internal_error() {
    let rc = ffi("test_fn", || panic!("boom {}", 42));
    assert_eq!(rc, WYVERN_EINTERNAL);
    assert_eq!(last(), "test_fn: internal error: boom 42");
}

#[test]
fn last_error_is_per_thread() {
    wyvern_detach(std::ptr::without_provenance_mut(0x99));
    assert!(last().contains("unknown Client handle"));
    std::thread::spawn(|| assert_eq!(last(), ""))
        .join()
        .unwrap();
}

#[test]
fn timeouts_forever_and_try_once() {
    assert_eq!(timeout(0), Duration::ZERO);
    assert_eq!(timeout(1500), Duration::from_micros(1500));
    assert_eq!(timeout(WYVERN_FOREVER), FOREVER);
    assert_eq!(timeout(-7), FOREVER);
    assert_eq!(timeout(i64::MAX), FOREVER);
    // "Forever" must not overflow an Instant.
    let _ = std::time::Instant::now() + FOREVER;
}
