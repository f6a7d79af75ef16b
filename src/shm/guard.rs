//! SIGBUS guard for the pool mapping (issue 13: "no client can crash the agent").
//!
//! Every client holds the pool memfd read-write, so any of them can
//! `fallocate(FALLOC_FL_PUNCH_HOLE)` a range of it. On hugetlbfs that frees
//! the huge pages and their reservation; the agent's next touch of that range
//! needs a free huge page from the system pool, and when none is free the
//! kernel sends SIGBUS to whichever agent thread touched it.
//!
//! [`install`] sets a process-wide `SA_SIGINFO` handler. When the faulting
//! address lies in a [`register`]ed mapping, the handler replaces the
//! faulting page (the mapping's page size, aligned down) with a private
//! anonymous zero mapping (`MAP_FIXED|MAP_PRIVATE|MAP_ANONYMOUS`), records
//! the damaged page in lock-free static storage, and returns: the access is
//! retried and succeeds on the private page. The agent picks the records up
//! with [`DamageReader`] and stops sharing anything in that page with clients.
//! A SIGBUS anywhere else (a genuine bug, or one sent with `kill`) restores
//! the previous action (the default: terminate with a core) and re-raises,
//! so it still kills the process.
//!
//! Only async-signal-safe operations run in the handler: atomic loads,
//! stores and fetch-adds on statics, `mmap`, `sigaction`, `raise`.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Once;

/// Mappings that can be registered at once.
pub const MAX_REGIONS: usize = 4;
/// Damage records kept (a page is recorded once: it never faults again, so
/// this covers every page of a pool up to 2 GiB of huge pages); later ones
/// only count in [`overflow`].
pub const MAX_DAMAGE: usize = 1024;

struct Region {
    /// Start address; 0 when the entry is free.
    base: AtomicUsize,
    len: AtomicUsize,
    page: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_REGION: Region = Region {
    base: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    page: AtomicUsize::new(0),
};
static REGIONS: [Region; MAX_REGIONS] = [EMPTY_REGION; MAX_REGIONS];

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_RECORD: AtomicU64 = AtomicU64::new(0);
/// `(region + 1) << 48 | offset / 4096`; 0 while not written yet.
static DAMAGE: [AtomicU64; MAX_DAMAGE] = [EMPTY_RECORD; MAX_DAMAGE];
/// Records claimed (may exceed `MAX_DAMAGE`: the rest are counted only).
static CLAIMED: AtomicUsize = AtomicUsize::new(0);
/// Pages replaced whose record did not fit.
static OVERFLOW: AtomicU64 = AtomicU64::new(0);
/// Pages the handler could not replace (`mmap` failed): the fault repeats.
static FAILED: AtomicU64 = AtomicU64::new(0);

static INSTALL: Once = Once::new();
static INSTALLED: AtomicBool = AtomicBool::new(false);
/// The action in place before ours (restored for a fault outside the pool).
static mut PREVIOUS: Option<libc::sigaction> = None;

/// One damaged page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Damage {
    /// The handle [`register`] returned for the mapping.
    pub region: usize,
    /// Offset of the damaged page in the mapping (aligned to its page size).
    pub offset: u64,
}

/// Install the handler (once per process; later calls do nothing).
pub fn install() -> std::io::Result<()> {
    let mut result = Ok(());
    INSTALL.call_once(|| {
        // SAFETY: a zeroed `sigaction` is a valid value (no handler, empty
        // mask, no flags) that we fill in before use.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = handler as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        // SAFETY: `sa.sa_mask` is a valid sigset_t to initialize.
        unsafe { libc::sigemptyset(&mut sa.sa_mask) };
        // SAFETY: a zeroed sigaction is valid storage for the old action.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointers to our own structs; the handler is an
        // `extern "C"` function of the signature SA_SIGINFO expects.
        if unsafe { libc::sigaction(libc::SIGBUS, &sa, &mut old) } != 0 {
            result = Err(std::io::Error::last_os_error());
            return;
        }
        // SAFETY: written once, here, before `INSTALLED` is published; the
        // handler reads it only after seeing `INSTALLED` (Acquire below).
        unsafe { PREVIOUS = Some(old) };
        INSTALLED.store(true, Ordering::Release);
    });
    result
}

/// Whether [`install`] succeeded in this process.
pub fn installed() -> bool {
    INSTALLED.load(Ordering::Acquire)
}

/// Watch `[base, base+len)`, a shared mapping of `page`-byte pages: a SIGBUS
/// in it is turned into a private zero page and a damage record. Returns a
/// handle for [`unregister`] and [`Damage::region`], or `None` when all
/// [`MAX_REGIONS`] are taken.
pub fn register(base: usize, len: usize, page: usize) -> Option<usize> {
    assert!(base != 0 && page.is_power_of_two() && base % page == 0 && len % page == 0);
    for (i, r) in REGIONS.iter().enumerate() {
        // Claim the entry with a placeholder address, then publish the real
        // one after `len` and `page` (the handler looks at `base` first).
        if r.base
            .compare_exchange(0, usize::MAX, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            r.len.store(len, Ordering::Relaxed);
            r.page.store(page, Ordering::Relaxed);
            r.base.store(base, Ordering::Release);
            return Some(i);
        }
    }
    None
}

/// Stop watching a mapping (before unmapping it).
pub fn unregister(region: usize) {
    if let Some(r) = REGIONS.get(region) {
        r.base.store(0, Ordering::Release);
    }
}

/// Pages replaced whose record did not fit in the table.
pub fn overflow() -> u64 {
    OVERFLOW.load(Ordering::Relaxed)
}

/// Pages the handler failed to replace.
pub fn failed() -> u64 {
    FAILED.load(Ordering::Relaxed)
}

/// Reads damage records in order; one per consumer (the agent).
#[derive(Debug, Default)]
pub struct DamageReader {
    next: usize,
}

impl DamageReader {
    /// A reader from the first record.
    pub fn new() -> DamageReader {
        DamageReader::default()
    }

    /// Whether there may be new records: one relaxed load, for the poll loop.
    pub fn pending(&self) -> bool {
        CLAIMED.load(Ordering::Relaxed) > self.next
    }

    /// Append the new records to `out`. A record claimed but not written
    /// yet (its handler is still running) is picked up by a later call.
    pub fn take(&mut self, out: &mut Vec<Damage>) {
        let claimed = CLAIMED.load(Ordering::Acquire).min(MAX_DAMAGE);
        while self.next < claimed {
            let v = DAMAGE[self.next].load(Ordering::Acquire);
            if v == 0 {
                break;
            }
            out.push(Damage {
                region: (v >> 48) as usize - 1,
                offset: (v & ((1 << 48) - 1)) << 12,
            });
            self.next += 1;
        }
        if self.next >= MAX_DAMAGE {
            // Everything later is counted in `overflow` only.
            self.next = CLAIMED.load(Ordering::Acquire).max(self.next);
        }
    }
}

extern "C" fn handler(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    // SAFETY: errno is thread-local; saving and restoring it keeps the
    // interrupted code's errno intact across our system calls.
    let errno = unsafe { *libc::__errno_location() };
    // Only a fault the kernel raised (si_code > 0) names an address; a
    // SIGBUS sent with kill/tgkill (si_code <= 0) is never recovered.
    if code <= 0 || !recover(addr) {
        // Not ours: restore what was there before (the default action:
        // terminate with a core) and re-raise. The signal is blocked while
        // we run, so it is delivered as we return; a genuine fault would
        // also repeat.
        // SAFETY: PREVIOUS was written before INSTALLED was published, and
        // this handler is only reachable after that.
        let prev = unsafe { PREVIOUS };
        let mut dfl: libc::sigaction = match prev {
            Some(p) if p.sa_sigaction != handler as *const () as usize => p,
            // SAFETY: zeroed is SIG_DFL with an empty mask.
            _ => unsafe { std::mem::zeroed() },
        };
        if dfl.sa_sigaction == libc::SIG_IGN {
            // An ignored SIGBUS from a fault would loop forever.
            dfl.sa_sigaction = libc::SIG_DFL;
        }
        // SAFETY: sigaction and raise are async-signal-safe; valid pointers.
        unsafe {
            libc::sigaction(sig, &dfl, std::ptr::null_mut());
            libc::raise(sig);
        }
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// The handler's work: replace the page at `addr` if a registered mapping
/// holds it. Async-signal-safe.
fn recover(addr: usize) -> bool {
    for (i, r) in REGIONS.iter().enumerate() {
        let base = r.base.load(Ordering::Acquire);
        if base == 0 || base == usize::MAX {
            continue;
        }
        let len = r.len.load(Ordering::Relaxed);
        let page = r.page.load(Ordering::Relaxed);
        if addr < base || addr - base >= len {
            continue;
        }
        let at = addr & !(page - 1);
        // SAFETY: `[at, at+page)` lies inside a mapping registered as the
        // pool (page-aligned, checked at registration); MAP_FIXED replaces
        // exactly that range with private zero memory, which every access
        // the agent makes through the pool tolerates (it trusts nothing in
        // the pool). Nothing else lives in that range.
        let p = unsafe {
            libc::mmap(
                at as *mut libc::c_void,
                page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            FAILED.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let n = CLAIMED.fetch_add(1, Ordering::AcqRel);
        match DAMAGE.get(n) {
            Some(slot) => {
                let v = ((i as u64 + 1) << 48) | ((at - base) as u64 >> 12);
                slot.store(v, Ordering::Release);
            }
            None => {
                OVERFLOW.fetch_add(1, Ordering::Relaxed);
            }
        }
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// A punched page of a registered shared mapping whose refault fails
    /// reads back as zeros, is recorded, and the process goes on. On shmem a
    /// punched page refaults fine, so the SIGBUS is forced with a mapping
    /// beyond the end of the file (the same fault path: no page to map).
    #[test]
    fn a_sigbus_in_a_registered_mapping_is_survived_and_recorded() {
        install().unwrap();
        let page = 4096;
        let fd = super::super::memfd("guard-test", false).unwrap();
        nix::unistd::ftruncate(&fd, page as i64).unwrap();
        let len = 4 * page;
        // SAFETY: a fresh shared mapping of our own memfd, chosen by the kernel.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let base = p as usize;
        let region = register(base, len, page).unwrap();
        let mut reader = DamageReader::new();
        // Records from other tests in this process (none today) are skipped.
        let mut old = Vec::new();
        reader.take(&mut old);
        // SAFETY: inside our mapping; page 0 is backed by the file.
        unsafe { std::ptr::write_volatile(p as *mut u8, 7) };
        // Pages 2 and 3 lie beyond the file's end: touching them is a SIGBUS.
        // SAFETY: inside our mapping; the guard turns the fault into a zero page.
        let v = unsafe { std::ptr::read_volatile((base + 2 * page + 100) as *const u8) };
        assert_eq!(v, 0);
        // SAFETY: as above.
        unsafe { std::ptr::write_volatile((base + 3 * page + 5) as *mut u8, 9) };
        // SAFETY: page 3 is now private memory of ours.
        let v = unsafe { std::ptr::read_volatile((base + 3 * page + 5) as *const u8) };
        assert_eq!(v, 9);
        assert!(reader.pending());
        let mut got = Vec::new();
        reader.take(&mut got);
        let mine: Vec<u64> = got
            .iter()
            .filter(|d| d.region == region)
            .map(|d| d.offset)
            .collect();
        assert_eq!(mine, vec![2 * page as u64, 3 * page as u64]);
        assert!(!reader.pending());
        // The shared page 0 is untouched.
        // SAFETY: inside our mapping.
        assert_eq!(unsafe { std::ptr::read_volatile(p as *const u8) }, 7);
        unregister(region);
        // SAFETY: our own mapping, no references into it remain.
        unsafe { libc::munmap(p, len) };
    }

    /// A fault outside every registered mapping is not swallowed: the
    /// handler hands it back to the default action. Checked in a child
    /// (fork: only async-signal-safe calls run in it before `_exit`).
    #[test]
    fn a_sigbus_outside_the_pool_still_kills() {
        install().unwrap();
        let page = 4096;
        let fd = super::super::memfd("guard-test-2", false).unwrap();
        // SAFETY: a fresh shared mapping of an empty memfd: any touch is a SIGBUS.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        // SAFETY: the child only reads the (faulting) address and exits;
        // both are async-signal-safe, so forking a threaded test is sound.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: the fault is the point; the handler must not recover it.
            let _ = unsafe { std::ptr::read_volatile(p as *const u8) };
            // SAFETY: async-signal-safe exit of the child.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child with a valid pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGBUS,
            "the child must die of SIGBUS, status {status:#x}"
        );
        // SAFETY: our own mapping.
        unsafe { libc::munmap(p, page) };
    }
}
