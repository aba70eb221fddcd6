//! The process's global allocator: the system allocator, counting the bytes
//! each thread holds so that the sandbox can hold a run to a memory budget.
//!
//! This is zoomwire's only `unsafe` code: `GlobalAlloc` is an unsafe trait and
//! no maintained crate counts live bytes per thread against a limit (the
//! counting wrappers on crates.io keep global totals, or put a header on every
//! allocation and copy on every `realloc`). Every call is passed to `System`
//! unchanged; beside it, the calling thread's count of live bytes goes up on
//! allocation and down on deallocation, and once it passes the thread's limit
//! a flag is raised. The allocator never refuses memory (a refused allocation
//! aborts the whole process): the sandbox reads the flag between operations
//! and ends the run ([`super::memory`]).
//!
//! Each allocation counts as the system allocator lays it out, not as asked:
//! a chunk with an 8-byte header, rounded up to 16 bytes, at least 32. A map
//! of 50,000 small entries takes half as much again as its bytes, and the
//! budget should hold the memory, not the bytes asked for.
//!
//! The count is one `const`-initialised thread-local of a `Copy` type, so
//! touching it never allocates and never runs a destructor, on any thread at
//! any time; it costs a few instructions per allocation. Each thread's peak
//! is kept too, so that after a run that held much the sandbox can give the
//! freed pages back to the system ([`release_free_memory`]): glibc keeps them
//! in the thread's arena otherwise, and a daemon whose runs take turns on
//! many threads would stay as large as all their peaks together.

#![allow(
    unsafe_code,
    reason = "implementing GlobalAlloc requires unsafe; every call is forwarded to System unchanged"
)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// `System`, counting each thread's live bytes.
pub struct CountingAllocator;

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// One thread's count.
#[derive(Clone, Copy)]
struct Account {
    /// Bytes allocated by this thread minus bytes freed by it.
    live: isize,
    /// The highest `live` since [`set_limit`].
    peak: isize,
    /// `live` above this raises `exceeded`.
    limit: isize,
    exceeded: bool,
}

thread_local! {
    static ACCOUNT: Cell<Account> = const {
        Cell::new(Account { live: 0, peak: 0, limit: isize::MAX, exceeded: false })
    };
}

#[inline]
fn count(change: isize) {
    // `try_with` cannot fail for a const-initialised value without a destructor.
    let _ = ACCOUNT.try_with(|cell| {
        let mut account = cell.get();
        account.live = account.live.wrapping_add(change);
        account.peak = account.peak.max(account.live);
        if account.live > account.limit {
            account.exceeded = true;
        }
        cell.set(account);
    });
}

/// The bytes an allocation of `size` takes from glibc's malloc: its chunk.
#[inline]
fn bytes(size: usize) -> isize {
    const HEADER: usize = 8;
    const MIN_CHUNK: usize = 32;
    let chunk = size.saturating_add(HEADER + 15) & !15;
    isize::try_from(chunk.max(MIN_CHUNK)).unwrap_or(isize::MAX)
}

// SAFETY: every method forwards to `System` with the caller's arguments and
// returns what it returned; the counting touches only a thread-local `Cell`.
unsafe impl GlobalAlloc for CountingAllocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which is `System`'s.
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            count(bytes(layout.size()));
        }
        pointer
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let pointer = unsafe { System.alloc_zeroed(layout) };
        if !pointer.is_null() {
            count(bytes(layout.size()));
        }
        pointer
    }

    #[inline]
    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: `pointer` came from this allocator, that is from `System`, with `layout`.
        unsafe { System.dealloc(pointer, layout) };
        count(-bytes(layout.size()));
    }

    #[inline]
    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `pointer` came from `System` with `layout`; the caller upholds the rest.
        let moved = unsafe { System.realloc(pointer, layout, new_size) };
        if !moved.is_null() {
            count(bytes(new_size) - bytes(layout.size()));
        }
        moved
    }
}

/// Bytes the calling thread holds: allocated by it and not freed by it.
pub(crate) fn live_bytes() -> isize {
    ACCOUNT.try_with(|cell| cell.get().live).unwrap_or(0)
}

/// The calling thread's limit (`isize::MAX` when it has none).
pub(crate) fn limit() -> isize {
    ACCOUNT
        .try_with(|cell| cell.get().limit)
        .unwrap_or(isize::MAX)
}

/// Sets the calling thread's limit on live bytes, and whether it is already
/// passed; the peak starts again from what the thread holds now.
pub(crate) fn set_limit(limit: isize) {
    let _ = ACCOUNT.try_with(|cell| {
        let mut account = cell.get();
        account.limit = limit;
        account.exceeded = account.live > limit;
        account.peak = account.live;
        cell.set(account);
    });
}

/// The most the calling thread held since its limit was last set.
pub(crate) fn peak_bytes() -> isize {
    ACCOUNT.try_with(|cell| cell.get().peak).unwrap_or(0)
}

/// Raises the calling thread's peak to at least `peak` (an outer budget's,
/// when an inner one ends).
pub(crate) fn keep_peak(peak: isize) {
    let _ = ACCOUNT.try_with(|cell| {
        let mut account = cell.get();
        account.peak = account.peak.max(peak);
        cell.set(account);
    });
}

/// Gives the pages of freed memory in every arena back to the system.
/// Takes a few milliseconds after a large run; it frees nothing in use.
pub(crate) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            /// glibc: releases free memory at the top of the heap and, since
            /// 2.8, the free pages inside every arena; takes no pointer.
            safe fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        malloc_trim(0);
    }
}

/// Holds glibc's malloc to one arena per two cores (at least one) for the
/// whole process; returns whether glibc took the setting. Call it first
/// thing in `main`, before any thread starts. `MALLOC_ARENA_MAX`, when set,
/// is left to decide.
///
/// glibc gives a thread that finds the arenas busy an arena of its own, up
/// to eight per core, and an arena keeps the memory freed in it: the
/// daemon's forty threads (script pool, runtime, journal) spread a burst
/// over a dozen arenas that each stay as large as their own peak. In a
/// 100,000-event burst on 2 cores the daemon's peak RSS fell from 77.5 to
/// 63.2 MiB with one arena (69.3 with two), CPU per event within the noise:
/// most small allocations skip the arena's lock through glibc's per-thread
/// cache. The counting above does not depend on arenas.
pub fn limit_malloc_arenas() -> bool {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return false;
    }
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let arenas = std::ffi::c_int::try_from((cores / 2).max(1)).unwrap_or(std::ffi::c_int::MAX);
    set_malloc_arena_max(arenas)
}

/// `mallopt(M_ARENA_MAX, arenas)`; false where glibc is not the allocator.
fn set_malloc_arena_max(arenas: std::ffi::c_int) -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        /// glibc's `M_ARENA_MAX` parameter of `mallopt`.
        const M_ARENA_MAX: std::ffi::c_int = -8;
        unsafe extern "C" {
            /// glibc: sets one of malloc's parameters; 1 on success, 0 on error.
            safe fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
        }
        mallopt(M_ARENA_MAX, arenas) == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = arenas;
        false
    }
}

/// Whether the calling thread's live bytes passed its limit since it was set.
#[inline]
pub(crate) fn exceeded() -> bool {
    ACCOUNT
        .try_with(|cell| cell.get().exceeded)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_this_thread_holds_and_raises_the_flag_past_the_limit() {
        std::thread::spawn(|| {
            let before = live_bytes();
            let mut held: Vec<u8> = Vec::with_capacity(1 << 20);
            assert!(live_bytes() - before >= 1 << 20);
            held.reserve_exact(4 << 20);
            assert!(
                live_bytes() - before >= 4 << 20,
                "a realloc counts its growth"
            );
            drop(held);
            assert!(live_bytes() - before < 1024);
            let small: Vec<Box<u16>> = (0..1000).map(Box::new).collect();
            assert!(
                live_bytes() - before >= 1000 * 32,
                "a two-byte box takes a 32-byte chunk"
            );
            drop(small);

            set_limit(live_bytes() + (2 << 20));
            assert!(!exceeded());
            let small = vec![0u8; 1 << 20];
            assert!(!exceeded());
            let big = vec![0u8; 2 << 20];
            assert!(exceeded(), "the flag stays up once the limit was passed");
            drop((small, big));
            assert!(exceeded());
            set_limit(isize::MAX);
            assert!(!exceeded());
        })
        .join()
        .unwrap();
    }

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_takes_the_arena_limit() {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        let arenas = std::ffi::c_int::try_from((cores / 2).max(1)).unwrap();
        assert!(set_malloc_arena_max(arenas));
    }

    #[test]
    fn memory_freed_by_another_thread_stays_counted_where_it_was_made() {
        std::thread::spawn(|| {
            let before = live_bytes();
            let made_here = vec![1u8; 1 << 20];
            std::thread::spawn(move || drop(made_here)).join().unwrap();
            assert!(live_bytes() - before >= 1 << 20);
        })
        .join()
        .unwrap();
    }
}
