//! A cache of large host blocks for the CPU backend (PyTorch's caching allocator, for host
//! memory). A training step allocates the same buffer sizes every step; without a cache each
//! large one is mapped fresh from the OS, page-faulted in 4 KiB at a time (the kernel zeroing
//! every page), and unmapped again when freed (with a TLB shootdown across threads) — on a
//! 2-core machine that was 10–15 % of a ResNet-18 step.
//!
//! Blocks of at least [`MIN_BYTES`] are allocated in size classes (each power-of-two range
//! split into 16 steps, so the slack is under 1/8 of the request) and, when a CPU tensor storage or
//! a backend scratch buffer is freed, kept here instead of being returned to the allocator,
//! up to a limit (default 2 GiB; `HEMI_CPU_CACHE_BYTES` sets it, 0 turns the cache off). A
//! request of the same class takes a cached block back. Cached blocks are not counted in
//! [`crate::memory_stats`] (which counts live tensor data, like
//! `torch.cuda.memory_allocated`); [`crate::memory::host_cache_bytes`] reports them and
//! [`crate::memory::empty_host_cache`] gives them back to the allocator.

use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::{Mutex, OnceLock};

/// Blocks smaller than this go straight to the allocator (its own free lists serve them well).
pub(crate) const MIN_BYTES: usize = 1 << 16;

/// The block size a request of `bytes` (≥ [`MIN_BYTES`]) is rounded up to: a multiple of 1/16
/// of the next power of two; `None` when that overflows.
pub(crate) fn class_of(bytes: usize) -> Option<usize> {
    let step = bytes.checked_next_power_of_two()? / 16;
    bytes.div_ceil(step).checked_mul(step)
}

/// A cached block (owned, unaliased memory of the global allocator) and how many of its
/// leading bytes hold initialized values (the length its last vector had).
struct Block(NonNull<u8>, usize);

// SAFETY: a cached block is plain memory owned by the cache; nothing else points into it.
unsafe impl Send for Block {}

struct Cache {
    /// Free blocks by (bytes, alignment).
    free: HashMap<(usize, usize), Vec<Block>>,
    held: usize,
    limit: usize,
}

fn cache() -> &'static Mutex<Cache> {
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    CACHE.get_or_init(|| {
        let limit = std::env::var("HEMI_CPU_CACHE_BYTES")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(2 << 30);
        Mutex::new(Cache {
            free: HashMap::new(),
            held: 0,
            limit,
        })
    })
}

fn lock() -> std::sync::MutexGuard<'static, Cache> {
    cache().lock().unwrap_or_else(|e| e.into_inner())
}

/// The capacity (in `T`s) of the size class of `n` elements, when they are cacheable: at least
/// [`MIN_BYTES`], and `T`'s size a power of two up to 64 (so it divides the class).
pub(crate) fn class_capacity<T>(n: usize) -> Option<usize> {
    let size = std::mem::size_of::<T>();
    let bytes = n.checked_mul(size)?;
    if bytes < MIN_BYTES || !size.is_power_of_two() || size > 64 {
        return None;
    }
    class_of(bytes).map(|c| c / size)
}

/// The capacity a vector for `n` elements gets: its size class when cacheable, else `n`.
pub(crate) fn capacity_for<T>(n: usize) -> usize {
    class_capacity::<T>(n).unwrap_or(n)
}

/// An empty vector with room for `n` elements taken from the cache, if a block of their class
/// is cached, and how many leading elements of its spare capacity hold initialized values
/// (left by its previous user: any bit pattern of a `Pod` type is a value).
pub(crate) fn take<T>(n: usize) -> Option<(Vec<T>, usize)> {
    let cap = class_capacity::<T>(n)?;
    let key = (cap * std::mem::size_of::<T>(), std::mem::align_of::<T>());
    let block = {
        let mut c = lock();
        let block = c.free.get_mut(&key)?.pop()?;
        c.held -= key.0;
        block
    };
    // SAFETY: the block was allocated by the global allocator with the layout of a `Vec<T>` of
    // capacity `cap` (size `key.0`, alignment `align_of::<T>()`: see `give`), and is unaliased;
    // length 0 needs no initialized elements.
    let v = unsafe { Vec::from_raw_parts(block.0.as_ptr().cast::<T>(), 0, cap) };
    Some((v, block.1 / std::mem::size_of::<T>()))
}

/// Keeps `v`'s block for reuse when it is a cacheable size and the cache has room, else frees
/// it.
pub(crate) fn give<T: bytemuck::Pod>(v: Vec<T>) {
    let cap = v.capacity();
    if class_capacity::<T>(cap) != Some(cap) {
        return;
    }
    let bytes = cap * std::mem::size_of::<T>();
    let mut c = lock();
    if c.held + bytes > c.limit {
        return;
    }
    let init = v.len() * std::mem::size_of::<T>();
    let mut v = std::mem::ManuallyDrop::new(v);
    // `Vec`'s pointer is non-null and its block has the layout (bytes, align_of::<T>()); `T`
    // is `Pod`, so forgetting the elements drops nothing.
    let ptr = NonNull::new(v.as_mut_ptr().cast::<u8>()).expect("a vector with capacity");
    c.held += bytes;
    c.free
        .entry((bytes, std::mem::align_of::<T>()))
        .or_default()
        .push(Block(ptr, init));
}

/// Bytes held in cached blocks now.
pub(crate) fn held() -> usize {
    lock().held
}

/// Frees every cached block; returns the bytes freed.
pub(crate) fn empty() -> usize {
    let mut c = lock();
    let freed = c.held;
    for ((bytes, align), blocks) in c.free.drain() {
        for b in blocks {
            // SAFETY: each block was allocated with exactly this layout (see `give`) and is
            // owned by the cache.
            unsafe {
                std::alloc::dealloc(
                    b.0.as_ptr(),
                    std::alloc::Layout::from_size_align_unchecked(bytes, align),
                )
            };
        }
    }
    c.held = 0;
    freed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_round_up_by_less_than_an_eighth() {
        for bytes in [
            MIN_BYTES,
            MIN_BYTES + 1,
            100_000,
            3 << 20,
            (1 << 30) + 12345,
        ] {
            let c = class_of(bytes).expect("fits");
            assert!(c >= bytes && c - bytes < bytes / 8, "{bytes} -> {c}");
            assert_eq!(class_of(c), Some(c), "a class is its own class");
        }
        assert_eq!(class_of(usize::MAX), None);
        assert_eq!(capacity_for::<f32>(10), 10, "small requests are exact");
        assert_eq!(
            capacity_for::<[u8; 3]>(1 << 20),
            1 << 20,
            "odd element sizes are exact"
        );
    }

    #[test]
    fn a_given_block_is_taken_back_for_the_same_class() {
        let n = 300_001;
        let mut v: Vec<f32> = Vec::with_capacity(capacity_for::<f32>(n));
        v.resize(n, 1.5);
        let ptr = v.as_ptr();
        give(v);
        // Another thread's test may take it first; then a fresh request misses the cache.
        if let Some((w, init)) = take::<f32>(n - 7) {
            assert!(init <= w.capacity());
            assert!(w.capacity() >= n && w.is_empty());
            if w.as_ptr() == ptr {
                assert_eq!(w.capacity(), capacity_for::<f32>(n));
                assert_eq!(init, n, "the first n values were written");
            }
            give(w);
        }
        // An f64 request of the same bytes has another alignment: never this block.
        let d = take::<f64>(n / 2);
        assert!(d.is_none_or(|(d, _)| d.as_ptr().cast::<f32>() != ptr));
    }
}
