//! The process's global allocator: jemalloc, counting the bytes each thread
//! holds so that the sandbox can hold a run to a memory budget.
//!
//! With the call that registers the journal's WAL frame writer
//! (`journal/vfs.rs`), this is zoomwire's only `unsafe` code: `GlobalAlloc` is an unsafe trait and
//! no maintained crate counts live bytes per thread against a limit (the
//! counting wrappers on crates.io keep global totals, or put a header on every
//! allocation and copy on every `realloc`). Every call is passed to
//! [`tikv_jemallocator::Jemalloc`] unchanged; beside it, the calling thread's count of live bytes goes up on
//! allocation and down on deallocation, and once it passes the thread's limit
//! a flag is raised. The allocator never refuses memory (a refused allocation
//! aborts the whole process): the sandbox reads the flag between operations
//! and ends the run ([`super::memory`]).
//!
//! Why jemalloc rather than glibc's malloc: the daemon's threads (runtime
//! workers, script threads, the journal's threads) allocate and free on every
//! event, and glibc's one arena ([`limit_malloc_arenas`]) is shared behind
//! one lock once its small per-thread cache runs dry: in a burst its lock's
//! futex calls were 5-11% of the samples and malloc/free ~12%. jemalloc's
//! per-thread cache holds more and its arena locks are per size class. It
//! runs with one arena, a thread cache of at most 32 objects per size class
//! and no blocks above 8 KiB, and freed pages given back after a second
//! ([`MALLOC_CONF`]), which keeps the daemon's peak and idle RSS near what
//! they were with glibc. mimalloc was
//! tried too: as fast, but 8-10 MiB more at the peak of a burst whatever its
//! purge settings (its pages belong to one thread each). C code (SQLite,
//! aws-lc) still allocates from glibc's malloc.
//!
//! Each allocation counts as glibc's malloc would lay it out, as it did
//! before the switch, not as asked: a chunk with an 8-byte header, rounded up
//! to 16 bytes, at least 32. A map of 50,000 small entries takes half as much
//! again as its bytes, the budget should hold the memory, not the bytes asked
//! for, and a budget keeps its meaning (jemalloc's size classes for small
//! sizes are within the same few bytes).
//!
//! The count is one `const`-initialised thread-local of a `Copy` type, so
//! touching it never allocates and never runs a destructor, on any thread at
//! any time; it costs a few instructions per allocation. Each thread's peak
//! is kept too, so that after a run that held much the sandbox can give the
//! freed pages back to the system ([`release_free_memory`]): the thread's
//! cache keeps some otherwise, and a daemon whose runs take turns on many
//! threads would stay as large as all their caches together.

#![allow(
    unsafe_code,
    reason = "implementing GlobalAlloc requires unsafe; every call is forwarded to jemalloc unchanged"
)]

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;

use tikv_jemallocator::Jemalloc;

/// jemalloc, counting each thread's live bytes.
pub struct CountingAllocator;

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// jemalloc's options, which it reads before `main` (the `malloc_conf` of
/// its manual; the build prefixes jemalloc's symbols with `_rjem_`): one
/// arena, as glibc had ([`limit_malloc_arenas`]); at most 32 cached objects
/// of a small size class per thread (200 by default: the daemon's forty
/// threads would keep several MiB in their caches); freed pages given back
/// at once rather than after ten seconds (now after one: below). In a
/// 100,000-event burst these took the peak RSS from 56-58 MiB (jemalloc's
/// defaults) to 43-46 (glibc: 42-43).
///
/// Freed pages are given back after a second (`dirty_decay_ms:1000`), not
/// at once: at once, every free that emptied a page was an `madvise` and a
/// TLB shootdown across the threads, ~4.5% of the daemon's CPU in a burst.
/// On the quiet bench machine, alternated runs against `0`: CPU per event
/// 0.85-0.9x (durable median 28.7 vs 32 µs, memory journal 11.7 vs 13.2),
/// peak RSS +1.2-1.5 MiB; 100 ms kept most of the peak and little of the
/// gain (27.8 and 13.8 µs). Idle RSS is the same (pages left over are given
/// back as the next allocations tick the decay, or by
/// [`release_free_memory`] after a large run).
///
/// Blocks above 8 KiB are not cached per thread (`tcache_max`, 32 KiB by
/// default, where a thread keeps up to 20 blocks of each size above 14 KiB):
/// in the durable journal's 100,000-event burst that took the peak RSS
/// 1-2.7 MiB lower (medians of 5 and 9 alternated runs: 48.6 and 46.9 vs
/// 49.6 MiB), at CPU per event within the noise (ratio 1.00-1.02); 4 KiB
/// took 1.5 MiB more off but cost 9% more CPU per event (a block above
/// 14 KiB not cached is its own extent: mapped and purged each time).
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &[u8; 90] =
    b"narenas:1,tcache_nslots_small_max:32,tcache_max:8192,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

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

// SAFETY: every method forwards to `Jemalloc` with the caller's arguments and
// returns what it returned; the counting touches only a thread-local `Cell`.
unsafe impl GlobalAlloc for CountingAllocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which is `Jemalloc`'s.
        let pointer = unsafe { Jemalloc.alloc(layout) };
        if !pointer.is_null() {
            count(bytes(layout.size()));
        }
        pointer
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let pointer = unsafe { Jemalloc.alloc_zeroed(layout) };
        if !pointer.is_null() {
            count(bytes(layout.size()));
        }
        pointer
    }

    #[inline]
    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: `pointer` came from this allocator, that is from `Jemalloc`, with `layout`.
        unsafe { Jemalloc.dealloc(pointer, layout) };
        count(-bytes(layout.size()));
    }

    #[inline]
    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Rhai's strings (smartstring 1.0's `ensure_capacity`) ask for a
        // realloc to the size they already have on every push onto a heap
        // string. glibc answers that at once; jemalloc treats a large one as a
        // new allocation (its event counters and a clock read each time), which
        // made a script padding a 1 MB string 4x slower. The block already
        // fits `new_size` with its alignment, so it is its own answer.
        if new_size == layout.size() {
            return pointer;
        }
        // SAFETY: `pointer` came from `Jemalloc` with `layout`; the caller upholds the rest.
        let moved = unsafe { Jemalloc.realloc(pointer, layout, new_size) };
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

/// Gives the calling thread's cached memory and the free pages of every
/// arena back to the system. Takes a few milliseconds after a large run; it
/// frees nothing in use.
pub(crate) fn release_free_memory() {
    mallctl_command(c"thread.tcache.flush");
    // 4096 is jemalloc's `MALLCTL_ARENAS_ALL`: every arena.
    mallctl_command(c"arena.4096.purge");
}

/// Runs a jemalloc control that reads and writes nothing.
fn mallctl_command(name: &std::ffi::CStr) -> bool {
    // SAFETY: `name` is a NUL-terminated control name; with null old and new
    // pointers and lengths of 0 jemalloc reads and writes no memory of ours.
    let status = unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    status == 0
}

/// Holds glibc's malloc, which C code (SQLite, aws-lc) still uses, to one
/// arena per two cores (at least one) for the whole process; returns whether
/// glibc took the setting. Call it first thing in `main`, before any thread
/// starts. `MALLOC_ARENA_MAX`, when set, is left to decide.
///
/// Before jemalloc, when all of Rust's memory came from glibc too: glibc gives a thread that finds the arenas busy an arena of its own, up
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
    fn a_realloc_to_the_same_size_keeps_the_block_and_the_count() {
        let layout = Layout::from_size_align(1 << 20, 8).unwrap();
        // SAFETY: a non-zero layout; the block is freed with the same layout.
        unsafe {
            let block = GLOBAL.alloc(layout);
            assert!(!block.is_null());
            let before = live_bytes();
            assert_eq!(GLOBAL.realloc(block, layout, layout.size()), block);
            assert_eq!(live_bytes(), before);
            GLOBAL.dealloc(block, layout);
        }
    }

    /// jemalloc's value of the option `name` (`opt.<name>`), whose C type
    /// must be `T`; `None` if jemalloc does not know it.
    fn jemalloc_option<T: Default>(name: &std::ffi::CStr) -> Option<T> {
        let mut value = T::default();
        let mut size = std::mem::size_of::<T>();
        // SAFETY: the caller names an option whose C type is `T`; `size` is its size.
        let status = unsafe {
            tikv_jemalloc_sys::mallctl(
                name.as_ptr(),
                std::ptr::from_mut(&mut value).cast(),
                &mut size,
                std::ptr::null_mut(),
                0,
            )
        };
        (status == 0).then_some(value)
    }

    #[test]
    fn jemalloc_takes_its_options_and_the_release_controls() {
        assert_eq!(MALLOC_CONF.last(), Some(&0), "a C string");
        let arenas = jemalloc_option::<std::ffi::c_uint>(c"opt.narenas");
        assert_eq!(arenas, Some(1), "jemalloc read MALLOC_CONF");
        let tcache_max = jemalloc_option::<usize>(c"opt.tcache_max");
        assert_eq!(tcache_max, Some(8192), "and every option after the first");
        let dirty_decay = jemalloc_option::<isize>(c"opt.dirty_decay_ms");
        assert_eq!(dirty_decay, Some(1000));
        assert!(mallctl_command(c"thread.tcache.flush"));
        assert!(mallctl_command(c"arena.4096.purge"));
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
