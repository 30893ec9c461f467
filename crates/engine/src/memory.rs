//! Per-device memory accounting: bytes currently held by tensor storages and the peak since
//! the last reset. Backends report every buffer they create and free; the numbers count
//! tensor data only (not allocator slack or host bookkeeping).
//!
//! The counters are process-wide, like `torch.cuda.memory_allocated`: concurrent work on
//! other threads shows up in them.

use crate::Device;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// A snapshot of one device's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Bytes held by live storages now.
    pub current: usize,
    /// Highest `current` since start or the last [`reset_peak_memory`].
    pub peak: usize,
    /// Number of storages created since start.
    pub allocations: u64,
}

fn table() -> &'static Mutex<HashMap<Device, MemoryStats>> {
    static TABLE: OnceLock<Mutex<HashMap<Device, MemoryStats>>> = OnceLock::new();
    TABLE.get_or_init(|| Mutex::new(HashMap::new()))
}

fn with_stats<R>(device: Device, f: impl FnOnce(&mut MemoryStats) -> R) -> R {
    let mut t = table().lock().unwrap_or_else(|e| e.into_inner());
    f(t.entry(device).or_default())
}

/// Records a new buffer of `bytes` on `device` (called by backends).
pub fn record_alloc(device: Device, bytes: usize) {
    with_stats(device, |s| {
        s.current += bytes;
        s.peak = s.peak.max(s.current);
        s.allocations += 1;
    })
}

/// Records that a buffer of `bytes` on `device` was freed (called by backends).
pub fn record_free(device: Device, bytes: usize) {
    with_stats(device, |s| s.current = s.current.saturating_sub(bytes))
}

/// The counters of `device`.
pub fn memory_stats(device: Device) -> MemoryStats {
    with_stats(device, |s| *s)
}

/// Sets the peak of `device` to its current usage, so the next peak measures what follows.
pub fn reset_peak_memory(device: Device) {
    with_stats(device, |s| s.peak = s.current)
}

/// Bytes of host memory the CPU backend keeps cached for reuse (freed large buffers, not
/// counted in [`memory_stats`]; see `HEMI_CPU_CACHE_BYTES` in the README).
pub fn host_cache_bytes() -> usize {
    crate::host_cache::held()
}

/// Returns every cached host block to the allocator (like `torch.cuda.empty_cache` for the
/// CPU backend's cache); returns the bytes released.
pub fn empty_host_cache() -> usize {
    crate::host_cache::empty()
}
