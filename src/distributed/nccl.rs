//! [`NcclCommunicator`]: collectives on CUDA tensors through NCCL, loaded at run time from
//! `libnccl.so.2` (the `nvidia-nccl-cu13` wheel's, or any on the loader's path), so hemi
//! builds and links without it.
//!
//! NCCL enqueues its kernels on the stream hemi's kernels run on (in order with them: no
//! overlap of reduction and compute on the GPU yet — that needs a second stream and events); a
//! collective has completed when that stream is idle. Waiting polls the stream and NCCL's
//! asynchronous error until the timeout, then aborts the NCCL communicator (which ends the
//! collective on this rank) and reports the rank. Not covered by the timeout:
//! `ncclCommInitRank` (it blocks until every rank joined) and a driver call of another thread
//! that waits behind a stuck collective while holding the driver's lock.

use super::{Communicator, ReduceOp, Work, DEFAULT_TIMEOUT};
use crate::cuda::driver::Driver;
use crate::cuda::storage::cuda_buffer;
use crate::{DType, Device, Error, Result, Tensor};
use libloading::Library;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

type NcclResult = c_int;
type RawComm = *mut c_void;

/// NCCL's `ncclUniqueId`: 128 opaque bytes that rank 0 creates and every rank receives.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NcclUniqueId {
    /// The bytes.
    pub internal: [c_char; 128],
}

impl std::fmt::Debug for NcclUniqueId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NcclUniqueId(..)")
    }
}

/// The NCCL entry points hemi uses (signatures of `nccl.h`, NCCL 2.x).
struct Api {
    get_version: unsafe extern "C" fn(*mut c_int) -> NcclResult,
    get_unique_id: unsafe extern "C" fn(*mut NcclUniqueId) -> NcclResult,
    comm_init_rank: unsafe extern "C" fn(*mut RawComm, c_int, NcclUniqueId, c_int) -> NcclResult,
    all_reduce: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        c_int,
        c_int,
        RawComm,
        *mut c_void,
    ) -> NcclResult,
    broadcast: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        c_int,
        c_int,
        RawComm,
        *mut c_void,
    ) -> NcclResult,
    async_error: unsafe extern "C" fn(RawComm, *mut NcclResult) -> NcclResult,
    abort: unsafe extern "C" fn(RawComm) -> NcclResult,
    destroy: unsafe extern "C" fn(RawComm) -> NcclResult,
    error_string: unsafe extern "C" fn(NcclResult) -> *const c_char,
}

/// A loaded `libnccl`.
pub struct NcclLibrary {
    api: Api,
    path: String,
    // Kept loaded for the function pointers in `api`.
    _lib: Library,
}

impl std::fmt::Debug for NcclLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NcclLibrary({})", self.path)
    }
}

fn nccl_err(msg: impl Into<String>) -> Error {
    Error::Distributed {
        op: "nccl",
        msg: msg.into(),
    }
}

/// Where `libnccl.so.2` may be: `HEMI_NCCL_LIB`, the loader's search path, then the
/// `nvidia/nccl/lib` folder of the `nvidia-nccl-cu13` wheel in a virtualenv or in the
/// system's, /usr/local's or the user's Python site-packages.
fn candidates() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::env::var_os("HEMI_NCCL_LIB")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    out.push(PathBuf::from("libnccl.so.2"));
    let mut prefixes: Vec<PathBuf> = ["VIRTUAL_ENV", "CONDA_PREFIX"]
        .iter()
        .filter_map(std::env::var_os)
        .map(PathBuf::from)
        .collect();
    prefixes.extend(["/usr/local", "/usr"].map(PathBuf::from));
    if let Some(home) = std::env::var_os("HOME") {
        prefixes.push(PathBuf::from(home).join(".local"));
    }
    for prefix in prefixes {
        let Ok(dirs) = std::fs::read_dir(prefix.join("lib")) else {
            continue;
        };
        for python in dirs.flatten().map(|d| d.path()) {
            let is_python = python
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("python3"));
            if is_python {
                for site in ["site-packages", "dist-packages"] {
                    out.push(python.join(site).join("nvidia/nccl/lib/libnccl.so.2"));
                }
            }
        }
    }
    out
}

fn symbol<T: Copy>(lib: &Library, name: &str) -> Result<T> {
    // SAFETY: each `T` is the C signature `nccl.h` declares for `name`.
    unsafe { lib.get::<T>(name.as_bytes()) }
        .map(|s| *s)
        .map_err(|e| nccl_err(format!("libnccl has no {name}: {e}")))
}

impl NcclLibrary {
    /// Loads NCCL once per process (see the module docs for where it is looked for).
    pub fn get() -> Result<Arc<NcclLibrary>> {
        static LIB: OnceLock<std::result::Result<Arc<NcclLibrary>, String>> = OnceLock::new();
        LIB.get_or_init(|| Self::load().map(Arc::new).map_err(|e| e.to_string()))
            .clone()
            .map_err(nccl_err)
    }

    fn load() -> Result<NcclLibrary> {
        let mut tried = Vec::new();
        for path in candidates() {
            if path.is_absolute() && !path.exists() {
                continue;
            }
            match Self::open(&path) {
                Ok(lib) => return Ok(lib),
                Err(e) => tried.push(e.to_string()),
            }
        }
        Err(nccl_err(format!(
            "cannot load libnccl.so.2 (pip install nvidia-nccl-cu13, or set HEMI_NCCL_LIB); \
             tried {}",
            tried.join("; ")
        )))
    }

    /// Loads NCCL from `path` (a file, or a name the loader searches for).
    pub fn open(path: &std::path::Path) -> Result<NcclLibrary> {
        // SAFETY: loading NCCL runs its initializers, which have no preconditions.
        match unsafe { Library::new(path) } {
            Ok(lib) => {
                let api = Api {
                    get_version: symbol(&lib, "ncclGetVersion")?,
                    get_unique_id: symbol(&lib, "ncclGetUniqueId")?,
                    comm_init_rank: symbol(&lib, "ncclCommInitRank")?,
                    all_reduce: symbol(&lib, "ncclAllReduce")?,
                    broadcast: symbol(&lib, "ncclBroadcast")?,
                    async_error: symbol(&lib, "ncclCommGetAsyncError")?,
                    abort: symbol(&lib, "ncclCommAbort")?,
                    destroy: symbol(&lib, "ncclCommDestroy")?,
                    error_string: symbol(&lib, "ncclGetErrorString")?,
                };
                Ok(NcclLibrary {
                    api,
                    path: path.display().to_string(),
                    _lib: lib,
                })
            }
            Err(e) => Err(nccl_err(format!("{}: {e}", path.display()))),
        }
    }

    /// The file that was loaded.
    pub fn path(&self) -> &str {
        &self.path
    }

    fn check(&self, what: &str, rc: NcclResult) -> Result<()> {
        if rc == 0 {
            return Ok(());
        }
        // SAFETY: ncclGetErrorString returns a static C string for any code.
        let msg = unsafe { CStr::from_ptr((self.api.error_string)(rc)) };
        Err(nccl_err(format!(
            "{what} failed: {} (code {rc})",
            msg.to_string_lossy()
        )))
    }

    /// NCCL's version as (major, minor, patch).
    pub fn version(&self) -> Result<(u32, u32, u32)> {
        let mut v: c_int = 0;
        // SAFETY: a valid out-pointer.
        self.check("ncclGetVersion", unsafe { (self.api.get_version)(&mut v) })?;
        let v = v as u32;
        // NCCL >= 2.9 encodes major*10000 + minor*100 + patch.
        Ok((v / 10000, (v / 100) % 100, v % 100))
    }

    /// A new unique id (rank 0 makes it and sends it to the others).
    pub fn unique_id(&self) -> Result<NcclUniqueId> {
        let mut id = NcclUniqueId { internal: [0; 128] };
        // SAFETY: a valid out-pointer to 128 bytes.
        self.check("ncclGetUniqueId", unsafe {
            (self.api.get_unique_id)(&mut id)
        })?;
        Ok(id)
    }
}

/// NCCL's code for a dtype.
fn nccl_dtype(dt: DType) -> c_int {
    match dt {
        DType::I64 => 4,
        DType::F16 => 6,
        DType::F32 => 7,
        DType::F64 => 8,
        DType::BF16 => 9,
    }
}

/// The NCCL communicator's state, shared with collectives in flight.
struct Inner {
    lib: Arc<NcclLibrary>,
    comm: RawComm,
    driver: Arc<dyn Driver>,
    rank: usize,
    world: usize,
    device: Device,
    timeout_ms: AtomicU64,
    broken: AtomicBool,
}

// SAFETY: the NCCL communicator handle is used only under the driver's lock (every NCCL call
// is made inside `with_raw_stream`), as NCCL requires for calls on one communicator.
unsafe impl Send for Inner {}
// SAFETY: see Send.
unsafe impl Sync for Inner {}

/// A [`Communicator`] over NCCL for tensors on one CUDA device per rank.
///
/// ```no_run
/// use hemi::distributed::{Communicator, NcclCommunicator, ReduceOp};
/// use hemi::{DType, Device, Tensor};
/// let comm = NcclCommunicator::single(Device::Cuda(0))?; // a world of one GPU
/// let t = Tensor::ones([1024], DType::F16, Device::Cuda(0))?;
/// comm.all_reduce(&t, ReduceOp::Sum)?;
/// # Ok::<(), hemi::Error>(())
/// ```
pub struct NcclCommunicator {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for NcclCommunicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = &self.inner;
        f.debug_struct("NcclCommunicator")
            .field("rank", &i.rank)
            .field("world", &i.world)
            .field("device", &i.device)
            .field("library", &i.lib.path)
            .finish()
    }
}

impl NcclCommunicator {
    /// Joins the NCCL communicator `id` as `rank` of `world`, on `device` (a real CUDA
    /// device). Blocks until every rank has joined.
    pub fn init(device: Device, rank: usize, world: usize, id: &NcclUniqueId) -> Result<Self> {
        let lib = NcclLibrary::get()?;
        if !matches!(device, Device::Cuda(_)) {
            return Err(nccl_err(format!(
                "NCCL needs a CUDA GPU device, not {device}"
            )));
        }
        if rank >= world {
            return Err(nccl_err(format!("rank {rank} of a world of {world}")));
        }
        // The device's driver, through a buffer of it.
        let probe = Tensor::zeros([1], DType::F32, device)?;
        let driver = Arc::clone(cuda_buffer("nccl", &probe.storage(), device)?.driver());
        let mut comm: RawComm = std::ptr::null_mut();
        let id = *id;
        driver.with_raw_stream(&mut |_| {
            // SAFETY: a valid out-pointer; the device's context is current.
            lib.check("ncclCommInitRank", unsafe {
                (lib.api.comm_init_rank)(&mut comm, world as c_int, id, rank as c_int)
            })
        })?;
        Ok(NcclCommunicator {
            inner: Arc::new(Inner {
                lib,
                comm,
                driver,
                rank,
                world,
                device,
                timeout_ms: AtomicU64::new(DEFAULT_TIMEOUT.as_millis() as u64),
                broken: AtomicBool::new(false),
            }),
        })
    }

    /// A world of one GPU (every collective is a copy onto itself): exercises the NCCL path
    /// on a host with one device.
    pub fn single(device: Device) -> Result<Self> {
        let id = NcclLibrary::get()?.unique_id()?;
        Self::init(device, 0, 1, &id)
    }

    /// One NCCL rank per MPI rank, on `device` (usually `Device::Cuda(local rank)`): rank 0's
    /// unique id is broadcast over `mpi`.
    #[cfg(feature = "mpi")]
    pub fn from_mpi(mpi: &super::MpiCommunicator, device: Device) -> Result<Self> {
        let id = match mpi.rank() {
            0 => NcclLibrary::get()?.unique_id()?,
            _ => NcclUniqueId { internal: [0; 128] },
        };
        let words: Vec<i64> = id
            .internal
            .chunks(8)
            .map(|c| i64::from_le_bytes(std::array::from_fn(|i| c[i] as u8)))
            .collect();
        let t = Tensor::from_vec(words, [16], Device::Cpu)?;
        mpi.broadcast(&t, 0)?;
        let mut id = NcclUniqueId { internal: [0; 128] };
        for (i, w) in t.to_vec::<i64>()?.into_iter().enumerate() {
            for (j, b) in w.to_le_bytes().into_iter().enumerate() {
                id.internal[i * 8 + j] = b as c_char;
            }
        }
        Self::init(device, mpi.rank(), mpi.world_size(), &id)
    }

    /// Sets how long a collective waits for the other ranks.
    pub fn with_timeout(self, timeout: Duration) -> Self {
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self.inner.timeout_ms.store(ms, Ordering::Relaxed);
        self
    }
}

impl Inner {
    fn usable(&self, op: &'static str) -> Result<()> {
        if self.broken.load(Ordering::Acquire) {
            return Err(Error::Distributed {
                op,
                msg: format!(
                    "rank {} of {}: the NCCL communicator was aborted after an earlier failure",
                    self.rank, self.world
                ),
            });
        }
        Ok(())
    }

    /// The device address of a contiguous tensor of this communicator's device.
    fn address(&self, op: &'static str, t: &Tensor) -> Result<*mut c_void> {
        super::host::check_contiguous(op, t)?;
        let storage = t.storage();
        let buf = cuda_buffer(op, &storage, self.device)?;
        let byte_offset = t.layout().offset() * t.dtype().size_in_bytes();
        Ok((buf.ptr() + byte_offset as u64) as *mut c_void)
    }

    /// Polls the stream until the enqueued collective is done, NCCL reports an error, or the
    /// timeout passes (then the NCCL communicator is aborted). Each poll — `cuStreamQuery`,
    /// `ncclCommGetAsyncError`, and an abort — runs under the driver's lock, where every other
    /// use of the communicator runs too, so none can touch it after the abort.
    fn wait(&self, op: &'static str, what: &str) -> Result<()> {
        let start = Instant::now();
        loop {
            let mut outcome: Option<Result<()>> = None;
            self.driver.with_raw_stream(&mut |stream| {
                if self.broken.load(Ordering::Acquire) {
                    outcome = Some(self.usable(op));
                    return Ok(());
                }
                // SAFETY: the device's stream, with its context current.
                let rc = unsafe { cust::sys::cuStreamQuery(stream.cast()) };
                if rc == cust::sys::cudaError_enum::CUDA_SUCCESS {
                    outcome = Some(Ok(()));
                    return Ok(());
                }
                let mut async_rc: NcclResult = 0;
                // SAFETY: a live communicator (not aborted: checked above, under the lock).
                let qrc = unsafe { (self.lib.api.async_error)(self.comm, &mut async_rc) };
                let how = if rc != cust::sys::cudaError_enum::CUDA_ERROR_NOT_READY {
                    Some(format!("failed: cuStreamQuery {rc:?}"))
                } else if qrc != 0 || async_rc != 0 {
                    let code = if qrc != 0 { qrc } else { async_rc };
                    Some(
                        self.lib
                            .check("NCCL", code)
                            .err()
                            .map_or_else(String::new, |e| e.to_string()),
                    )
                } else if start.elapsed() > self.timeout() {
                    Some(format!(
                        "did not complete within {:?}: another rank died, is stuck, or issued a \
                         different collective; the NCCL communicator is aborted",
                        self.timeout()
                    ))
                } else {
                    None
                };
                if let Some(how) = how {
                    self.broken.store(true, Ordering::Release);
                    // SAFETY: aborting a live communicator ends its pending work; it is never
                    // used again (`broken`).
                    unsafe { (self.lib.api.abort)(self.comm) };
                    let e = Error::Distributed {
                        op,
                        msg: format!("rank {} of {}: {what} {how}", self.rank, self.world),
                    };
                    eprintln!("hemi: {e}");
                    outcome = Some(Err(e));
                }
                Ok(())
            })?;
            if let Some(r) = outcome {
                return r;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.load(Ordering::Relaxed))
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let (lib, comm, broken) = (&self.lib, self.comm, &self.broken);
        let _ = self.driver.with_raw_stream(&mut |stream| {
            if broken.load(Ordering::Acquire) {
                return Ok(());
            }
            // SAFETY: the device's stream; a live communicator, released once: destroyed when
            // idle, aborted when work is still pending (destroying would wait for it).
            unsafe {
                match cust::sys::cuStreamQuery(stream.cast()) {
                    cust::sys::cudaError_enum::CUDA_SUCCESS => (lib.api.destroy)(comm),
                    _ => (lib.api.abort)(comm),
                };
            }
            Ok(())
        });
    }
}

/// A collective enqueued on the device's stream.
struct NcclWork {
    inner: Arc<Inner>,
    tensor: Tensor,
    what: String,
}

impl Work for NcclWork {
    fn wait(self: Box<Self>) -> Result<()> {
        self.inner.wait("all_reduce", &self.what)?;
        self.tensor.mark_modified();
        Ok(())
    }
    fn wait_output(self: Box<Self>) -> Result<Tensor> {
        let t = self.tensor.clone();
        self.wait()?;
        Ok(t)
    }
}

impl Communicator for NcclCommunicator {
    fn rank(&self) -> usize {
        self.inner.rank
    }

    fn world_size(&self) -> usize {
        self.inner.world
    }

    fn all_reduce_start(&self, tensor: &Tensor, op: ReduceOp) -> Result<Box<dyn Work>> {
        let inner = &self.inner;
        inner.usable("all_reduce")?;
        let ptr = inner.address("all_reduce", tensor)?;
        let nccl_op = match op {
            ReduceOp::Sum => 0,
            ReduceOp::Max => 2,
        };
        let (count, dtype) = (tensor.elem_count(), nccl_dtype(tensor.dtype()));
        inner.driver.with_raw_stream(&mut |stream| {
            inner.usable("all_reduce")?; // (again under the lock an abort takes)
                                         // SAFETY: `ptr` addresses `count` elements of `dtype` on this device (a
                                         // contiguous tensor kept alive by the caller until the work is waited for);
                                         // in place is allowed; the stream is the device's.
            inner.lib.check("ncclAllReduce", unsafe {
                (inner.lib.api.all_reduce)(ptr, ptr, count, dtype, nccl_op, inner.comm, stream)
            })
        })?;
        Ok(Box::new(NcclWork {
            inner: Arc::clone(inner),
            tensor: tensor.clone(),
            what: format!("all_reduce of {count} {} values", tensor.dtype()),
        }))
    }

    fn broadcast(&self, tensor: &Tensor, root: usize) -> Result<()> {
        let inner = &self.inner;
        inner.usable("broadcast")?;
        super::host::check_root("broadcast", root, inner.world)?;
        let ptr = inner.address("broadcast", tensor)?;
        let (count, dtype) = (tensor.elem_count(), nccl_dtype(tensor.dtype()));
        inner.driver.with_raw_stream(&mut |stream| {
            inner.usable("broadcast")?;
            // SAFETY: as in all_reduce_start.
            inner.lib.check("ncclBroadcast", unsafe {
                (inner.lib.api.broadcast)(ptr, ptr, count, dtype, root as c_int, inner.comm, stream)
            })
        })?;
        inner.wait(
            "broadcast",
            &format!("broadcast of {count} {} values", tensor.dtype()),
        )?;
        tensor.mark_modified();
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        // NCCL has no barrier: an all-reduce of one value is one.
        let t = Tensor::zeros([1], DType::F32, self.inner.device)?;
        self.all_reduce(&t, ReduceOp::Sum)
    }
}
