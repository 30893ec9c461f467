//! [`MpiCommunicator`]: collectives over MPI (Open MPI through the `mpi` crate) on host
//! buffers, with a timeout.
//!
//! Each collective is started non-blocking (`MPI_Iallreduce`, `MPI_Ibcast`, `MPI_Ibarrier`) and
//! polled with `MPI_Test` until it completes or the communicator's timeout passes; blocking MPI
//! calls would wait forever for a rank that died or stopped. MPI calls are serialized by a
//! lock (MPI is initialized with `MPI_THREAD_SERIALIZED`), so the communicator can be used from
//! any thread — [`DistributedDataParallel`](super::DistributedDataParallel) reduces from its
//! own communication thread.

use super::host::{check_contiguous, check_root, HostBuf};
use super::{Communicator, ReduceOp, Work, DEFAULT_TIMEOUT};
use crate::{Error, Result, Tensor};
use mpi::environment::Universe;
use mpi::ffi;
use mpi::Threading;
use std::ffi::{c_int, c_void};
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The MPI state guarded by the lock: the initialized library and a private duplicate of
/// `MPI_COMM_WORLD` (so hemi's collectives never match a user's own MPI traffic).
struct MpiState {
    universe: Option<Universe>,
    comm: ffi::MPI_Comm,
}

// SAFETY: MPI is initialized with MPI_THREAD_SERIALIZED and every MPI call made through
// this state holds the mutex around it, so the raw communicator handle is only ever used by
// one thread at a time.
unsafe impl Send for MpiState {}

/// A [`Communicator`] over all processes started by `mpirun` (MPI's world).
///
/// ```no_run
/// use hemi::distributed::{Communicator, MpiCommunicator, ReduceOp};
/// use hemi::{Device, Tensor};
/// // Run as: mpirun -np 2 target/release/examples/...
/// let comm = MpiCommunicator::init()?.with_timeout(std::time::Duration::from_secs(60));
/// let t = Tensor::full([3], comm.rank() as f64, hemi::DType::F32, Device::Cpu)?;
/// comm.all_reduce(&t, ReduceOp::Sum)?; // [0+1, 0+1, 0+1] on both ranks
/// # Ok::<(), hemi::Error>(())
/// ```
pub struct MpiCommunicator {
    inner: Arc<Inner>,
}

/// The communicator's state, shared with the collectives still running
/// ([`MpiWork`]); MPI is finalized when the last of them is gone.
struct Inner {
    state: Mutex<MpiState>,
    rank: usize,
    world: usize,
    /// The collective timeout in milliseconds.
    timeout_ms: AtomicU64,
    broken: AtomicBool,
    /// The thread that initialized MPI (the only one that may finalize it).
    init_thread: std::thread::ThreadId,
}

extern "C" {
    /// `MPI_IN_PLACE` of the MPI library (src/distributed/mpi_shim.c, compiled by build.rs).
    fn hemi_mpi_in_place() -> *mut c_void;
}

impl std::fmt::Debug for MpiCommunicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = &self.inner;
        f.debug_struct("MpiCommunicator")
            .field("rank", &i.rank)
            .field("world", &i.world)
            .field("timeout", &i.timeout())
            .field("broken", &i.broken.load(Ordering::Relaxed))
            .finish()
    }
}

fn dist_err(msg: impl Into<String>) -> Error {
    Error::Distributed {
        op: "mpi",
        msg: msg.into(),
    }
}

fn check(what: &str, code: c_int) -> Result<()> {
    if code == 0 {
        Ok(())
    } else {
        Err(dist_err(format!("{what} returned MPI error code {code}")))
    }
}

impl MpiCommunicator {
    /// Initializes MPI (once per process) and returns the world of all ranks `mpirun`
    /// started; a process started without `mpirun` is a world of one. Collectives time out
    /// after [`DEFAULT_TIMEOUT`]. Errors when MPI was already initialized or lacks
    /// thread support.
    pub fn init() -> Result<Self> {
        let (universe, level) = mpi::initialize_with_threading(Threading::Serialized)
            .ok_or_else(|| dist_err("MPI is already initialized in this process"))?;
        if level < Threading::Serialized {
            return Err(dist_err(format!(
                "this MPI library provides thread level {level:?}; hemi needs Serialized"
            )));
        }
        let mut comm = MaybeUninit::<ffi::MPI_Comm>::uninit();
        let (mut rank, mut size) = (0 as c_int, 0 as c_int);
        // SAFETY: MPI is initialized; the out-pointers are valid for writes.
        unsafe {
            check(
                "MPI_Comm_dup",
                ffi::MPI_Comm_dup(ffi::RSMPI_COMM_WORLD, comm.as_mut_ptr()),
            )?;
            let comm = comm.assume_init();
            // Errors come back as codes (reported as hemi errors) instead of aborting.
            check(
                "MPI_Comm_set_errhandler",
                ffi::MPI_Comm_set_errhandler(comm, ffi::RSMPI_ERRORS_RETURN),
            )?;
            check("MPI_Comm_rank", ffi::MPI_Comm_rank(comm, &mut rank))?;
            check("MPI_Comm_size", ffi::MPI_Comm_size(comm, &mut size))?;
            Ok(MpiCommunicator {
                inner: Arc::new(Inner {
                    state: Mutex::new(MpiState {
                        universe: Some(universe),
                        comm,
                    }),
                    rank: rank as usize,
                    world: size as usize,
                    timeout_ms: AtomicU64::new(DEFAULT_TIMEOUT.as_millis() as u64),
                    broken: AtomicBool::new(false),
                    init_thread: std::thread::current().id(),
                }),
            })
        }
    }

    /// Sets how long a collective waits for the other ranks.
    pub fn with_timeout(self, timeout: Duration) -> Self {
        self.set_timeout(timeout);
        self
    }

    /// Sets how long collectives started from now on wait for the other ranks.
    pub fn set_timeout(&self, timeout: Duration) {
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self.inner.timeout_ms.store(ms, Ordering::Relaxed);
    }

    /// The collective timeout.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout()
    }

    /// Whether this process was started by an MPI launcher (`mpirun`/`mpiexec`), judged by
    /// the environment variables Open MPI, MPICH and PMIx set.
    pub fn launched_by_mpirun() -> bool {
        ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"]
            .iter()
            .any(|v| std::env::var_os(v).is_some())
    }
}

impl Inner {
    fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.load(Ordering::Relaxed))
    }

    fn lock(&self, op: &'static str) -> Result<std::sync::MutexGuard<'_, MpiState>> {
        if self.broken.load(Ordering::Acquire) {
            return Err(Error::Distributed {
                op,
                msg: format!(
                    "rank {} of {}: the communicator is broken by an earlier failed or timed-out \
                     collective",
                    self.rank, self.world
                ),
            });
        }
        Ok(self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Polls `req` until it completes or the timeout passes (taking the lock for each
    /// `MPI_Test`, so other threads start collectives meanwhile). On a timeout the buffers the
    /// request uses must stay allocated (MPI may still write them): the caller leaks them.
    fn wait(&self, op: &'static str, what: &str, mut req: ffi::MPI_Request) -> Result<()> {
        let start = Instant::now();
        let timeout = self.timeout();
        loop {
            let mut done: c_int = 0;
            let state = self.lock(op)?;
            // SAFETY: `req` is an active request of this communicator; the lock is held.
            let code = unsafe { ffi::MPI_Test(&mut req, &mut done, ffi::RSMPI_STATUS_IGNORE) };
            drop(state);
            if code != 0 {
                self.broken.store(true, Ordering::Release);
                return Err(self.failure(op, what, format!("failed with MPI error code {code}")));
            }
            if done != 0 {
                return Ok(());
            }
            let waited = start.elapsed();
            if waited > timeout {
                self.broken.store(true, Ordering::Release);
                return Err(self.failure(
                    op,
                    what,
                    format!(
                        "did not complete within {:?}: another rank died, is stuck, or issued a \
                         different collective; this communicator cannot be used any more",
                        timeout
                    ),
                ));
            }
            if waited < Duration::from_micros(100) {
                std::hint::spin_loop();
            } else if waited < Duration::from_millis(2) {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }

    fn failure(&self, op: &'static str, what: &str, how: String) -> Error {
        let e = Error::Distributed {
            op,
            msg: format!("rank {} of {}: {what} {how}", self.rank, self.world),
        };
        // Said at once: a launcher may kill this process before the error reaches `main`.
        eprintln!("hemi: {e}");
        e
    }
}

/// The MPI datatype and raw pointers of a host buffer.
fn raw_parts(buf: &mut HostBuf) -> (ffi::MPI_Datatype, *mut c_void) {
    // SAFETY (reads of the datatype handles): extern constants MPI defines at link time.
    unsafe {
        match buf {
            HostBuf::F32(v) => (ffi::RSMPI_FLOAT, v.as_mut_ptr().cast()),
            HostBuf::F64(v) => (ffi::RSMPI_DOUBLE, v.as_mut_ptr().cast()),
            HostBuf::I64(v) => (ffi::RSMPI_INT64_T, v.as_mut_ptr().cast()),
        }
    }
}

fn count_of(buf: &HostBuf) -> Result<c_int> {
    c_int::try_from(buf.len()).map_err(|_| {
        dist_err(format!(
            "{} elements exceed MPI's count limit of {} per collective; reduce in chunks",
            buf.len(),
            c_int::MAX
        ))
    })
}

/// A started `MPI_Iallreduce` (in place in `buf`, which MPI writes until it completes) and
/// the tensor that receives the result. Dropped without being waited for, it waits then
/// (MPI must not outlive the buffer).
struct MpiWork {
    inner: Arc<Inner>,
    pending: Option<(ffi::MPI_Request, HostBuf)>,
    tensor: Tensor,
    what: String,
}

// SAFETY: the request handle is only used under the communicator's lock (MPI is initialized
// with MPI_THREAD_SERIALIZED); the buffer is owned heap memory.
unsafe impl Send for MpiWork {}

impl MpiWork {
    /// Waits for the request; the reduced values.
    fn finish(&mut self) -> Result<HostBuf> {
        let (request, buf) = self
            .pending
            .take()
            .ok_or_else(|| dist_err("the collective was already waited for"))?;
        match self.inner.wait("all_reduce", &self.what, request) {
            Ok(()) => Ok(buf),
            Err(e) => {
                // MPI may still write into the buffer: it must outlive this process's use of
                // MPI.
                std::mem::forget(buf);
                Err(e)
            }
        }
    }
}

impl Drop for MpiWork {
    fn drop(&mut self) {
        if self.pending.is_some() {
            let _ = self.finish();
        }
    }
}

impl Work for MpiWork {
    fn wait(mut self: Box<Self>) -> Result<()> {
        let buf = self.finish()?;
        buf.write(&self.tensor)
    }
    fn wait_output(mut self: Box<Self>) -> Result<Tensor> {
        let buf = self.finish()?;
        buf.into_tensor_like(&self.tensor)
    }
}

impl Communicator for MpiCommunicator {
    fn rank(&self) -> usize {
        self.inner.rank
    }

    fn world_size(&self) -> usize {
        self.inner.world
    }

    fn all_reduce_start(&self, tensor: &Tensor, op: ReduceOp) -> Result<Box<dyn Work>> {
        check_contiguous("all_reduce", tensor)?;
        // The values, reduced in place in one host buffer.
        let mut buf = HostBuf::read(tensor)?;
        let count = count_of(&buf)?;
        let what = format!("all_reduce of {} {} values", buf.len(), tensor.dtype());
        let state = self.inner.lock("all_reduce")?;
        let (dtype, ptr) = raw_parts(&mut buf);
        let mut req = MaybeUninit::<ffi::MPI_Request>::uninit();
        // SAFETY: the buffer holds `count` elements of `dtype`; it moves (heap memory does
        // not) into the returned work, which keeps it until the request completed (also when
        // dropped unwaited); the lock serializes MPI calls.
        let request = unsafe {
            let mpi_op = match op {
                ReduceOp::Sum => ffi::RSMPI_SUM,
                ReduceOp::Max => ffi::RSMPI_MAX,
            };
            let rc = ffi::MPI_Iallreduce(
                hemi_mpi_in_place(),
                ptr,
                count,
                dtype,
                mpi_op,
                state.comm,
                req.as_mut_ptr(),
            );
            if rc != 0 {
                self.inner.broken.store(true, Ordering::Release);
                return Err(self.inner.failure(
                    "all_reduce",
                    &what,
                    format!("could not start: MPI error code {rc}"),
                ));
            }
            req.assume_init()
        };
        drop(state);
        Ok(Box::new(MpiWork {
            inner: Arc::clone(&self.inner),
            pending: Some((request, buf)),
            tensor: tensor.clone(),
            what,
        }))
    }

    fn broadcast(&self, tensor: &Tensor, root: usize) -> Result<()> {
        let inner = &self.inner;
        check_contiguous("broadcast", tensor)?;
        check_root("broadcast", root, inner.world)?;
        let mut buf = HostBuf::read(tensor)?;
        let count = count_of(&buf)?;
        let what = format!(
            "broadcast of {} {} values from rank {root}",
            buf.len(),
            tensor.dtype()
        );
        let (dtype, ptr) = raw_parts(&mut buf);
        let mut req = MaybeUninit::<ffi::MPI_Request>::uninit();
        // SAFETY: the buffer holds `count` elements of `dtype` and outlives the request (on a
        // timeout it is leaked below); the lock serializes MPI calls.
        let request = unsafe {
            let state = inner.lock("broadcast")?;
            check(
                "MPI_Ibcast",
                ffi::MPI_Ibcast(
                    ptr,
                    count,
                    dtype,
                    root as c_int,
                    state.comm,
                    req.as_mut_ptr(),
                ),
            )?;
            req.assume_init()
        };
        if let Err(e) = inner.wait("broadcast", &what, request) {
            std::mem::forget(buf);
            return Err(e);
        }
        if inner.rank == root {
            return Ok(());
        }
        buf.write(tensor)
    }

    fn barrier(&self) -> Result<()> {
        let inner = &self.inner;
        let mut req = MaybeUninit::<ffi::MPI_Request>::uninit();
        // SAFETY: the lock serializes MPI calls; the request is polled to completion.
        let request = unsafe {
            let state = inner.lock("barrier")?;
            check(
                "MPI_Ibarrier",
                ffi::MPI_Ibarrier(state.comm, req.as_mut_ptr()),
            )?;
            req.assume_init()
        };
        inner.wait("barrier", "barrier", request)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        if self.broken.load(Ordering::Acquire) {
            // A collective is still pending: MPI_Finalize would wait for it forever. The
            // process exits without finalizing, and the launcher ends the other ranks.
            std::mem::forget(state.universe.take());
            return;
        }
        if std::thread::current().id() != self.init_thread {
            // MPI may only be finalized by the thread that initialized it; this process ends
            // without MPI_Finalize (the launcher reports that).
            eprintln!(
                "hemi: rank {}: the MPI communicator was dropped on another thread than the one \
                 that created it; MPI is not finalized",
                self.rank
            );
            std::mem::forget(state.universe.take());
            return;
        }
        // SAFETY: no request is pending; the duplicate is freed before MPI is finalized (by
        // the universe's drop).
        unsafe {
            ffi::MPI_Comm_free(&mut state.comm);
        }
        state.universe.take();
    }
}
