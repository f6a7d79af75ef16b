//! The handle registry behind the C API.
//!
//! A handle given to C is an opaque pointer whose *value* is an id from a
//! counter that never repeats; it is never dereferenced. Every call looks the
//! id up in one global table first, so a made-up, freed (detached, released)
//! or wrong-kind handle is an error code, not undefined behaviour.
//!
//! Each attached client lives in a [`Slot`]: a mutex around everything that
//! holds a reference to the client's shared state (the `Client`, its
//! `Endpoint`s, the received `Message`s not yet released). A call takes
//! that mutex with `try_lock`: a second thread using the same client while a
//! call is in progress gets `WYVERN_EBUSY` instead of a data race.
//!
//! Lock order: the table's lock is never held while a slot's lock is taken;
//! a slot's lock may be held while the table's is taken (to add or remove
//! handles).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use super::{
    Fail, WYVERN_EBADHANDLE, WYVERN_EBUSY, WYVERN_ECLOSED, WYVERN_EINTERNAL, WYVERN_EINVAL,
};
use crate::client::{AsyncError, Client, Endpoint, Message, SendBuf};

/// What a handle names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Client,
    Endpoint,
    /// An endpoint closed with `wyvern_endpoint_close`: remembered until its
    /// client detaches, so that using it says "closed", not "unknown".
    ClosedEndpoint,
    Msg,
    /// A pool block allocated with `wyvern_alloc`, not yet sent or freed.
    Buf,
}

/// An open endpoint and the message a too-small receive buffer left at the
/// head of its queue.
pub(super) struct EpState {
    pub(super) ep: Endpoint,
    pub(super) pending: Option<Message>,
}

/// Everything of one attached client.
pub(super) struct ClientState {
    pub(super) client: Client,
    pub(super) eps: BTreeMap<u64, EpState>,
    pub(super) msgs: BTreeMap<u64, Message>,
    pub(super) bufs: BTreeMap<u64, SendBuf>,
    pub(super) errors: VecDeque<AsyncError>,
}

// SAFETY: `Client`, `Endpoint`, `Message` and `SendBuf` are `!Send` only because they
// share the client's state through `Rc` and `RefCell`, whose counts and
// borrow flags are not atomic. Every one of those objects that shares one
// client's state lives inside that client's `ClientState` (the C side only
// ever holds ids and raw pointers into payload bytes, which own nothing),
// and a `ClientState` is only reached through its `Slot`'s mutex. So no two
// threads ever touch the same `Rc` or `RefCell` at once, which is all that
// moving the group between threads requires. Nothing in them is tied to the
// thread that created it (no thread-locals, no thread ids).
unsafe impl Send for ClientState {}

/// One client's state behind its own lock; `None` once detached.
pub(super) struct Slot {
    state: Mutex<Option<ClientState>>,
}

struct Table {
    next: u64,
    handles: BTreeMap<u64, (Kind, Arc<Slot>)>,
}

/// Ids start far from 0 and small numbers, so a zeroed or made-up handle is
/// never valid.
const FIRST_ID: u64 = 0x5779_0000_0000_0001;

static TABLE: Mutex<Table> = Mutex::new(Table {
    next: FIRST_ID,
    handles: BTreeMap::new(),
});

fn table() -> MutexGuard<'static, Table> {
    // The table's own operations do not panic half-way; a poisoned lock only
    // means a panic happened elsewhere while it was held.
    TABLE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Register a new client; returns its handle id and its slot.
pub(super) fn add_client(state: ClientState) -> (u64, Arc<Slot>) {
    let slot = Arc::new(Slot {
        state: Mutex::new(Some(state)),
    });
    let id = add(Kind::Client, &slot);
    (id, slot)
}

/// Register a handle of `kind` belonging to `slot`.
pub(super) fn add(kind: Kind, slot: &Arc<Slot>) -> u64 {
    let mut t = table();
    let id = t.next;
    t.next += 1;
    t.handles.insert(id, (kind, slot.clone()));
    id
}

/// Forget one handle.
pub(super) fn remove(id: u64) {
    table().handles.remove(&id);
}

/// Change what a handle names (an endpoint becoming a closed one).
pub(super) fn retag(id: u64, kind: Kind) {
    if let Some(e) = table().handles.get_mut(&id) {
        e.0 = kind;
    }
}

/// The slot a handle of `kind` belongs to.
pub(super) fn lookup(id: u64, kind: Kind) -> Result<Arc<Slot>, Fail> {
    if id == 0 {
        return Err(Fail::new(WYVERN_EINVAL, "NULL handle"));
    }
    match table().handles.get(&id) {
        Some((k, slot)) if *k == kind => Ok(slot.clone()),
        Some((Kind::ClosedEndpoint, _)) if kind == Kind::Endpoint => {
            Err(Fail::new(WYVERN_ECLOSED, "the endpoint was closed"))
        }
        Some((k, _)) => Err(Fail::new(
            WYVERN_EBADHANDLE,
            format!("handle names a {k:?}, not a {kind:?}"),
        )),
        None => Err(Fail::new(
            WYVERN_EBADHANDLE,
            format!(
                "unknown {kind:?} handle {id:#x} (never valid, or freed by wyvern_detach / \
                 wyvern_msg_release)"
            ),
        )),
    }
}

/// Run `f` on the state of the client that handle `id` (of `kind`) belongs
/// to, holding that client's lock.
pub(super) fn with<R>(
    id: u64,
    kind: Kind,
    f: impl FnOnce(&Arc<Slot>, &mut ClientState) -> Result<R, Fail>,
) -> Result<R, Fail> {
    let slot = lookup(id, kind)?;
    let mut guard =
        match slot.state.try_lock() {
            Ok(g) => g,
            Err(TryLockError::WouldBlock) => {
                return Err(Fail::new(
                    WYVERN_EBUSY,
                    "another thread is using this client right now (a client and its endpoints \
                 are used from one thread at a time)",
                ))
            }
            Err(TryLockError::Poisoned(_)) => return Err(Fail::new(
                WYVERN_EINTERNAL,
                "an earlier call on this client failed internally; only wyvern_detach works now",
            )),
        };
    let Some(st) = guard.as_mut() else {
        return Err(Fail::new(WYVERN_EBADHANDLE, "the client was detached"));
    };
    f(&slot, st)
}

/// Take a client's state out of the registry, forgetting every handle of it
/// (client, endpoints, closed endpoints, messages). Works on a client whose
/// lock was poisoned by an internal failure.
pub(super) fn take_client(id: u64) -> Result<ClientState, Fail> {
    let slot = lookup(id, Kind::Client)?;
    let mut guard = match slot.state.try_lock() {
        Ok(g) => g,
        Err(TryLockError::Poisoned(p)) => p.into_inner(),
        Err(TryLockError::WouldBlock) => {
            return Err(Fail::new(
                WYVERN_EBUSY,
                "another thread is using this client right now",
            ))
        }
    };
    let st = guard
        .take()
        .ok_or_else(|| Fail::new(WYVERN_EBADHANDLE, "the client was detached"))?;
    table().handles.retain(|_, (_, s)| !Arc::ptr_eq(s, &slot));
    Ok(st)
}

/// How many handles are registered (for tests: nothing leaks).
#[cfg(feature = "testing")]
pub(super) fn live_handles() -> usize {
    table().handles.len()
}
