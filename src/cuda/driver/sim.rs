//! The emulator driver: device memory is host memory, launches go through the emulator's C
//! ABI (`hemi_sim_launch`, mirroring `cuLaunchKernel`'s `void**` arguments).

use super::{DevicePtr, Driver, LaunchConfig};
use hemi_engine::{Device, Error, Result};
use std::alloc::{alloc_zeroed, dealloc, Layout};
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
}

const ALIGN: usize = 256;

/// Emulated device `Device::CudaSim`. Launches are serialized by a lock (the emulator runs
/// one launch at a time per host thread; serializing keeps `atomic_*` emulation exact).
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

    /// Whether the emulator has a kernel of this name.
    pub fn has_kernel(&self, name: &str) -> bool {
        let Ok(c) = CString::new(name) else {
            return false;
        };
        // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
        unsafe { hemi_sim_has_kernel(c.as_ptr()) == 1 }
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
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { alloc_zeroed(layout(bytes)?) };
        if p.is_null() {
            return Err(Error::OutOfMemory {
                device: Device::CudaSim,
                requested: bytes,
            });
        }
        Ok(p as DevicePtr)
    }

    unsafe fn free(&self, ptr: DevicePtr, bytes: usize) {
        if let Ok(l) = layout(bytes) {
            // SAFETY: `ptr` came from `alloc` with the same size and alignment.
            unsafe { dealloc(ptr as *mut u8, l) }
        }
    }

    unsafe fn upload(&self, dst: DevicePtr, src: &[u8]) -> Result<()> {
        // SAFETY: the caller guarantees `dst .. dst + src.len()` lies in one live allocation,
        // which cannot overlap the host slice `src`.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
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
        let _serial = self.launch_lock.lock().unwrap_or_else(|e| e.into_inner());
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
