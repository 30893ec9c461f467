//! A caching allocator over a [`Driver`]: freed blocks are kept per rounded size and reused,
//! so steady-state training makes no driver allocations. Sizes round up to a power of two
//! (at least 512 bytes) up to 64 MiB, and to a multiple of 2 MiB above. On out-of-memory the
//! cache is released and the allocation retried once; a second failure is
//! `Err(OutOfMemory)` and the device stays usable. Per-device current/peak bytes (of rounded
//! blocks handed to tensors) go to `hemi_engine::memory`.

use super::driver::{DevicePtr, Driver};
use hemi_engine::{memory, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// See the module docs.
#[derive(Debug)]
pub struct CachingAllocator {
    driver: Arc<dyn Driver>,
    cache: Mutex<HashMap<usize, Vec<DevicePtr>>>,
}

/// Rounded block size for a request of `bytes`.
pub fn block_size(bytes: usize) -> usize {
    const BIG: usize = 64 << 20;
    const GRAIN: usize = 2 << 20;
    let b = bytes.max(1);
    if b <= BIG {
        b.next_power_of_two().max(512)
    } else {
        b.div_ceil(GRAIN).saturating_mul(GRAIN)
    }
}

impl CachingAllocator {
    /// An allocator with an empty cache.
    pub fn new(driver: Arc<dyn Driver>) -> Self {
        CachingAllocator {
            driver,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The driver underneath.
    pub fn driver(&self) -> &Arc<dyn Driver> {
        &self.driver
    }

    /// A block of at least `bytes`; returns its address and rounded size.
    pub fn alloc(&self, bytes: usize) -> Result<(DevicePtr, usize)> {
        // Under AddressSanitizer the emulator gets exact sizes: an access one element past a
        // buffer lands in a redzone instead of the block's rounding slack.
        let exact = cfg!(hemi_sim_asan) && self.driver.device() == hemi_engine::Device::CudaSim;
        let size = if exact {
            bytes.max(1)
        } else {
            block_size(bytes)
        };
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&size)
            .and_then(Vec::pop);
        let ptr = match cached {
            Some(p) => {
                // SAFETY: a cached block of exactly `size` bytes that no buffer holds.
                unsafe { self.driver.renew(p, size) };
                p
            }
            None => match self.driver.alloc(size) {
                Ok(p) => p,
                Err(_) => {
                    self.empty_cache();
                    self.driver.alloc(size)?
                }
            },
        };
        memory::record_alloc(self.driver.device(), size);
        Ok((ptr, size))
    }

    /// Returns a block to the cache.
    pub fn release(&self, ptr: DevicePtr, size: usize) {
        memory::record_free(self.driver.device(), size);
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(size)
            .or_default()
            .push(ptr);
    }

    /// Frees every cached block back to the driver.
    pub fn empty_cache(&self) {
        let blocks: Vec<(usize, Vec<DevicePtr>)> = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        for (size, ptrs) in blocks {
            for p in ptrs {
                // SAFETY: cached blocks came from `alloc` with this size and are no longer
                // handed out (they were released by their buffers).
                unsafe { self.driver.free(p, size) };
            }
        }
    }
}

impl Drop for CachingAllocator {
    fn drop(&mut self) {
        self.empty_cache();
    }
}
