//! The driver layer: device memory and kernel launches, behind one object-safe trait so the
//! CUDA backend's code is identical on a GPU ([`cust_driver::CustDriver`]) and on the host
//! emulator ([`sim::SimDriver`]). Every cust call lives in `cust_driver.rs`.

pub mod cust_driver;
pub mod sim;

use hemi_engine::{Device, Result};
use std::ffi::c_void;
use std::fmt::Debug;

/// A device address (a `CUdeviceptr` on a GPU, a host address on the emulator).
pub type DevicePtr = u64;

/// Launch geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchConfig {
    /// Blocks in x, y, z.
    pub grid: [u32; 3],
    /// Threads per block in x, y, z.
    pub block: [u32; 3],
    /// Dynamic shared memory bytes.
    pub smem: u32,
}

impl LaunchConfig {
    /// A 1-D launch covering `n` elements with `threads` per block, at most `max_blocks`
    /// blocks (kernels use grid-stride loops).
    pub fn linear(n: usize, threads: u32, max_blocks: u32) -> Self {
        let blocks = n.div_ceil(threads as usize).clamp(1, max_blocks as usize) as u32;
        LaunchConfig {
            grid: [blocks, 1, 1],
            block: [threads, 1, 1],
            smem: 0,
        }
    }
}

/// Memory and launches of one device. Implementations serialize launches and make copies
/// synchronous, so a kernel's results are visible to the next call. Every call that takes a
/// raw device address is `unsafe`: only the typed buffers of `cuda::storage` (which own
/// their allocation and know its size) call them, inside bounds they check.
pub trait Driver: Send + Sync + Debug {
    /// The device this driver runs.
    fn device(&self) -> Device;
    /// Allocates `bytes` (> 0) of device memory; `Err(OutOfMemory)` leaves the device usable.
    fn alloc(&self, bytes: usize) -> Result<DevicePtr>;
    /// Frees memory from [`Driver::alloc`].
    ///
    /// # Safety
    /// `ptr` must come from this driver's `alloc` with the same `bytes`, be freed once, and
    /// not be used afterwards.
    unsafe fn free(&self, ptr: DevicePtr, bytes: usize);
    /// A block from [`Driver::alloc`] changes owner (the caching allocator hands it out again):
    /// the emulator poisons it and tracks its bytes as never written, for its initcheck; a GPU
    /// does nothing (the default).
    ///
    /// # Safety
    /// `ptr .. ptr + bytes` must be one live allocation of this driver that nothing uses.
    unsafe fn renew(&self, _ptr: DevicePtr, _bytes: usize) {}
    /// Copies host bytes to device memory.
    ///
    /// # Safety
    /// `dst .. dst + src.len()` must lie inside one live allocation of this driver.
    unsafe fn upload(&self, dst: DevicePtr, src: &[u8]) -> Result<()>;
    /// Copies device memory to host bytes.
    ///
    /// # Safety
    /// `src .. src + dst.len()` must lie inside one live allocation of this driver.
    unsafe fn download(&self, src: DevicePtr, dst: &mut [u8]) -> Result<()>;
    /// Launches kernel `name`.
    ///
    /// # Safety
    /// `args` must hold one pointer per kernel parameter, each to a value of exactly that
    /// parameter's type, and every device pointer among them must address memory large
    /// enough for what the kernel touches. The typed wrappers in `cuda::kernels` guarantee it.
    unsafe fn launch(&self, name: &str, cfg: LaunchConfig, args: &mut [*mut c_void]) -> Result<()>;
    /// Waits for all launched work.
    fn synchronize(&self) -> Result<()>;

    /// Runs `f` with the device's context current on this thread and the raw `CUstream` that
    /// hemi's kernels run on, under the driver's lock: for libraries that enqueue their own
    /// work in stream order with hemi's (NCCL). The emulator has no stream: it errors.
    fn with_raw_stream(&self, f: &mut dyn FnMut(*mut c_void) -> Result<()>) -> Result<()> {
        let _ = f;
        Err(hemi_engine::Error::unsupported(
            "with_raw_stream",
            self.device(),
            "no CUDA stream on this device (the emulator runs kernels on the host)",
        ))
    }
}
