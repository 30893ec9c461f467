//! The emulator driver: device memory is host memory, launches go through the emulator's C
//! ABI (`hemi_sim_launch`, mirroring `cuLaunchKernel`'s `void**` arguments).

use super::{DevicePtr, Driver, LaunchConfig};
use hemi_engine::{Device, Error, Result};
use std::alloc::{alloc, dealloc, Layout};
use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::Mutex;

extern "C" {
    fn hemi_sim_launch(
        name: *const c_char,
        grid: *const u32,
        block: *const u32,
        smem: u32,
        args: *mut *mut c_void,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn hemi_sim_has_kernel(name: *const c_char) -> c_int;
    fn hemi_sim_kernels_anchor() -> c_int;
    fn hemi_sim_kernels_instrumented() -> c_int;
    fn hemi_sim_shake_this_thread(set: c_int, seed: u64);
    fn hemi_sim_swap_kernel(from: *const c_char, to: *const c_char) -> c_int;
    fn hemi_sim_track_alloc(ptr: *mut c_void, bytes: usize);
    fn hemi_sim_track_free(ptr: *mut c_void);
    fn hemi_sim_track_written(ptr: *const c_void, bytes: usize);
}

const ALIGN: usize = 256;

/// Emulated device `Device::CudaSim`. Launches are serialized by a lock (the emulator runs
/// one launch at a time per host thread; serializing keeps `atomic_*` emulation exact).
/// Allocations, frees and uploads take the same lock: they update the emulator's record of
/// device memory (fresh blocks are poisoned and count as never written, for its initcheck),
/// which a running launch reads.
#[derive(Debug, Default)]
pub struct SimDriver {
    launch_lock: Mutex<()>,
}

impl SimDriver {
    /// The emulator driver.
    pub fn new() -> Self {
        // SAFETY: a plain C function with no preconditions; calling it keeps the kernel
        // object (and its static registrations) linked.
        unsafe {
            hemi_sim_kernels_anchor();
        }
        SimDriver::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.launch_lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Why the emulator's racecheck and initcheck do not run, if they do not: the checkers
    /// are switched off (`HEMI_SIM_CHECKS=0`), or the kernels were built with AddressSanitizer
    /// instead of the access instrumentation the checkers need (`HEMI_SIM_ASAN=1`).
    pub fn checkers_inactive() -> Option<&'static str> {
        if std::env::var("HEMI_SIM_CHECKS").is_ok_and(|v| v == "0") {
            return Some("the emulator's checkers are off (HEMI_SIM_CHECKS=0)");
        }
        // SAFETY: a plain C function with no preconditions.
        if unsafe { hemi_sim_kernels_instrumented() } == 0 {
            return Some(
                "the kernels were built with AddressSanitizer, without the checkers' access \
                 instrumentation (HEMI_SIM_ASAN=1)",
            );
        }
        None
    }

    /// Sets the schedule shaker's seed for the launches this host thread makes from now on:
    /// `Some(0)` runs blocks and threads in program order, `Some(seed)` in seeded random
    /// orders, `None` returns to the `HEMI_SIM_SHAKE` environment variable (unset: 0).
    pub fn shake_this_thread(seed: Option<u64>) {
        // SAFETY: plain values; the emulator keeps them per host thread.
        unsafe { hemi_sim_shake_this_thread(c_int::from(seed.is_some()), seed.unwrap_or(0)) }
    }

    /// Whether the emulator has a kernel of this name.
    pub fn has_kernel(&self, name: &str) -> bool {
        let Ok(c) = CString::new(name) else {
            return false;
        };
        // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
        unsafe { hemi_sim_has_kernel(c.as_ptr()) == 1 }
    }
}

/// While alive, every launch of kernel `from` made by this thread on the emulator runs kernel
/// `to` instead. The emulator's mutation tests use it to put a deliberately broken kernel
/// (`kernels-cu/mutant.cuh`, e.g. `gemm_mma_f16__drop_barrier`) behind the public API and
/// check that the emulator's checkers catch it.
#[derive(Debug)]
pub struct KernelSwap {
    from: CString,
    /// The swap belongs to the emulator's record of this host thread: not `Send`.
    _thread_bound: std::marker::PhantomData<*const ()>,
}

impl KernelSwap {
    /// Swaps `to` in for `from`; `Err` if the emulator has no kernel `to`.
    pub fn new(from: &str, to: &str) -> Result<Self> {
        let bad = |what: &str| Error::Backend {
            device: Device::CudaSim,
            msg: format!("cannot swap kernel {from:?} for {to:?}: {what}"),
        };
        let from = CString::new(from).map_err(|_| bad("bad name"))?;
        let to_c = CString::new(to).map_err(|_| bad("bad name"))?;
        SimDriver::new();
        // SAFETY: both are valid NUL-terminated strings for the duration of the call.
        match unsafe { hemi_sim_swap_kernel(from.as_ptr(), to_c.as_ptr()) } {
            0 => Ok(KernelSwap {
                from,
                _thread_bound: std::marker::PhantomData,
            }),
            _ => Err(bad("the emulator has no such kernel")),
        }
    }
}

impl Drop for KernelSwap {
    fn drop(&mut self) {
        // SAFETY: a valid string; a null `to` removes the swap.
        unsafe { hemi_sim_swap_kernel(self.from.as_ptr(), std::ptr::null()) };
    }
}

fn layout(bytes: usize) -> Result<Layout> {
    Layout::from_size_align(bytes.max(1), ALIGN).map_err(|_| Error::OutOfMemory {
        device: Device::CudaSim,
        requested: bytes,
    })
}

impl Driver for SimDriver {
    fn device(&self) -> Device {
        Device::CudaSim
    }

    fn alloc(&self, bytes: usize) -> Result<DevicePtr> {
        let l = layout(bytes)?;
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { alloc(l) };
        if p.is_null() {
            return Err(Error::OutOfMemory {
                device: Device::CudaSim,
                requested: bytes,
            });
        }
        let _serial = self.lock();
        // SAFETY: `p` is a fresh allocation of `l.size()` bytes.
        unsafe { hemi_sim_track_alloc(p.cast(), l.size()) };
        Ok(p as DevicePtr)
    }

    unsafe fn free(&self, ptr: DevicePtr, bytes: usize) {
        if let Ok(l) = layout(bytes) {
            let _serial = self.lock();
            // SAFETY: `ptr` came from `alloc` with the same size and alignment; the emulator
            // forgets it before the memory goes back to the host allocator.
            unsafe {
                hemi_sim_track_free(ptr as *mut c_void);
                dealloc(ptr as *mut u8, l)
            }
        }
    }

    unsafe fn renew(&self, ptr: DevicePtr, bytes: usize) {
        if let Ok(l) = layout(bytes) {
            let _serial = self.lock();
            // SAFETY: the caller guarantees `ptr` is a live, unused block of `bytes` bytes
            // (rounded like `alloc`).
            unsafe { hemi_sim_track_alloc(ptr as *mut c_void, l.size()) };
        }
    }

    unsafe fn upload(&self, dst: DevicePtr, src: &[u8]) -> Result<()> {
        let _serial = self.lock();
        // SAFETY: the caller guarantees `dst .. dst + src.len()` lies in one live allocation,
        // which cannot overlap the host slice `src`.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len());
            hemi_sim_track_written(dst as *const c_void, src.len());
        }
        Ok(())
    }

    unsafe fn download(&self, src: DevicePtr, dst: &mut [u8]) -> Result<()> {
        // SAFETY: as in `upload`, with the roles swapped.
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    unsafe fn launch(&self, name: &str, cfg: LaunchConfig, args: &mut [*mut c_void]) -> Result<()> {
        let c = CString::new(name).map_err(|_| Error::Backend {
            device: Device::CudaSim,
            msg: format!("bad kernel name {name:?}"),
        })?;
        let mut err = vec![0 as c_char; 512];
        let _serial = self.lock();
        // SAFETY: forwarded from the caller's contract; the strings and arrays live across
        // the call.
        let rc = unsafe {
            hemi_sim_launch(
                c.as_ptr(),
                cfg.grid.as_ptr(),
                cfg.block.as_ptr(),
                cfg.smem,
                args.as_mut_ptr(),
                err.as_mut_ptr(),
                err.len(),
            )
        };
        if rc != 0 {
            let msg: Vec<u8> = err
                .iter()
                .take_while(|&&b| b != 0)
                .map(|&b| b as u8)
                .collect();
            return Err(Error::Backend {
                device: Device::CudaSim,
                msg: String::from_utf8_lossy(&msg).into_owned(),
            });
        }
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
}
