//! The GPU driver over cust 0.3.2 (the CUDA driver API). Every cust call of hemi is here.

use super::{DevicePtr, Driver, LaunchConfig};
use cust::context::{Context, CurrentContext};
use cust::module::Module;
use cust::stream::{Stream, StreamFlags};
use cust::sys;
use hemi_engine::{Device, Error, Result};
use std::ffi::c_void;
use std::sync::Mutex;

/// The fatbin `build.rs` compiled from `kernels-cu/`.
static FATBIN: &[u8] = include_bytes!(env!("HEMI_FATBIN"));

struct Inner {
    // Field order matters: the module and stream are dropped before the context.
    module: Module,
    stream: Stream,
    context: Context,
}

/// CUDA device `ordinal` through the driver API: one context, one module (the fatbin),
/// one stream. Calls are serialized by a lock and made with the context current.
pub struct CustDriver {
    ordinal: usize,
    inner: Mutex<Inner>,
}

// SAFETY: the driver-API handles inside are only used while holding the mutex, after making
// the context current on the calling thread (`with`), which is how the driver API allows
// handles to move between threads.
unsafe impl Send for CustDriver {}
// SAFETY: see `Send`; all access goes through the mutex.
unsafe impl Sync for CustDriver {}

impl std::fmt::Debug for CustDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CustDriver(cuda:{})", self.ordinal)
    }
}

fn err(ordinal: usize, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Backend {
        device: Device::Cuda(ordinal),
        msg: format!("{what}: {e}"),
    }
}

impl CustDriver {
    /// Number of CUDA devices, or an error saying why there are none (no driver, no GPU).
    pub fn device_count() -> Result<usize> {
        cust::init(cust::CudaFlags::empty()).map_err(|e| err(0, "cuInit", e))?;
        cust::device::Device::num_devices()
            .map(|n| n as usize)
            .map_err(|e| err(0, "cuDeviceGetCount", e))
    }

    /// Opens device `ordinal`: creates its context, loads the kernel module, makes a stream.
    pub fn new(ordinal: usize) -> Result<Self> {
        cust::init(cust::CudaFlags::empty()).map_err(|e| err(ordinal, "cuInit", e))?;
        let dev = cust::device::Device::get_device(ordinal as u32)
            .map_err(|e| err(ordinal, "cuDeviceGet", e))?;
        let context = Context::new(dev).map_err(|e| err(ordinal, "cuCtxCreate", e))?;
        let module =
            Module::from_fatbin(FATBIN, &[]).map_err(|e| err(ordinal, "cuModuleLoadData", e))?;
        let stream = Stream::new(StreamFlags::NON_BLOCKING, None)
            .map_err(|e| err(ordinal, "cuStreamCreate", e))?;
        Ok(CustDriver {
            ordinal,
            inner: Mutex::new(Inner {
                module,
                stream,
                context,
            }),
        })
    }

    fn with<R>(&self, f: impl FnOnce(&Inner) -> Result<R>) -> Result<R> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        CurrentContext::set_current(&inner.context)
            .map_err(|e| err(self.ordinal, "cuCtxSetCurrent", e))?;
        f(&inner)
    }
}

impl Driver for CustDriver {
    fn device(&self) -> Device {
        Device::Cuda(self.ordinal)
    }

    fn alloc(&self, bytes: usize) -> Result<DevicePtr> {
        self.with(|_| {
            let mut p: sys::CUdeviceptr = 0;
            // SAFETY: `p` is a valid out-pointer; the context is current.
            let rc = unsafe { sys::cuMemAlloc_v2(&mut p, bytes.max(1)) };
            match rc {
                sys::cudaError_enum::CUDA_SUCCESS => Ok(p),
                sys::cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY => Err(Error::OutOfMemory {
                    device: Device::Cuda(self.ordinal),
                    requested: bytes,
                }),
                other => Err(err(self.ordinal, "cuMemAlloc", format!("{other:?}"))),
            }
        })
    }

    unsafe fn free(&self, ptr: DevicePtr, _bytes: usize) {
        let _ = self.with(|_| {
            // SAFETY: `ptr` came from `alloc` on this context and is freed once.
            unsafe { sys::cuMemFree_v2(ptr) };
            Ok(())
        });
    }

    unsafe fn upload(&self, dst: DevicePtr, src: &[u8]) -> Result<()> {
        self.with(|inner| {
            inner
                .stream
                .synchronize()
                .map_err(|e| err(self.ordinal, "cuStreamSynchronize", e))?;
            // SAFETY: `dst` has at least `src.len()` bytes (the caller's buffer of that size).
            let rc = unsafe { sys::cuMemcpyHtoD_v2(dst, src.as_ptr().cast(), src.len()) };
            check(self.ordinal, "cuMemcpyHtoD", rc)
        })
    }

    unsafe fn download(&self, src: DevicePtr, dst: &mut [u8]) -> Result<()> {
        self.with(|inner| {
            inner
                .stream
                .synchronize()
                .map_err(|e| err(self.ordinal, "cuStreamSynchronize", e))?;
            // SAFETY: `src` has at least `dst.len()` bytes.
            let rc = unsafe { sys::cuMemcpyDtoH_v2(dst.as_mut_ptr().cast(), src, dst.len()) };
            check(self.ordinal, "cuMemcpyDtoH", rc)
        })
    }

    unsafe fn launch(&self, name: &str, cfg: LaunchConfig, args: &mut [*mut c_void]) -> Result<()> {
        self.with(|inner| {
            let f = inner
                .module
                .get_function(name)
                .map_err(|e| err(self.ordinal, name, e))?;
            let grid = (cfg.grid[0], cfg.grid[1], cfg.grid[2]);
            let block = (cfg.block[0], cfg.block[1], cfg.block[2]);
            // SAFETY: forwarded from the caller's contract on `args`.
            unsafe { inner.stream.launch(&f, grid, block, cfg.smem, args) }
                .map_err(|e| err(self.ordinal, name, e))
        })
    }

    fn synchronize(&self) -> Result<()> {
        self.with(|inner| {
            inner
                .stream
                .synchronize()
                .map_err(|e| err(self.ordinal, "cuStreamSynchronize", e))
        })
    }

    fn with_raw_stream(&self, f: &mut dyn FnMut(*mut c_void) -> Result<()>) -> Result<()> {
        self.with(|inner| f(inner.stream.as_inner().cast()))
    }
}

fn check(ordinal: usize, what: &str, rc: sys::CUresult) -> Result<()> {
    if rc == sys::cudaError_enum::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(err(ordinal, what, format!("{rc:?}")))
    }
}
