//! The CPU backend's threads: rayon's global pool, optionally with the calling thread as one of
//! its workers.

use crate::{Error, Result};

/// Builds rayon's global pool — the threads every CPU op runs on — with `threads` threads in
/// all (`None`: `RAYON_NUM_THREADS`, else one per logical CPU), **the calling thread being one
/// of them** (worker 0) when there are at least two. Call it once, at the start of the program,
/// from the thread that will run the training loop (normally `main`), before any CPU op.
///
/// Without it the pool's workers are all threads of their own, and every CPU op is handed from
/// the caller to a worker and back: the caller sleeps and is woken once per op, and the worker
/// that takes the op may have to be woken too (a 2-thread ResNet-18 step at 8 × 64 px switched
/// context 840 times; with the caller as a worker, 230, and ran 3–9 % faster). This is how
/// PyTorch's OpenMP threads run: the calling thread is thread 0.
///
/// The calling thread must outlive every use of the CPU backend (it is `main`'s thread in the
/// usual program). Ops called from other threads still work: the other workers run them.
///
/// # Errors
/// [`Error::InvalidArgument`] (naming rayon's reason) if the global pool already exists — it
/// is built once per process, by this function or by the first parallel op — or the OS
/// refuses a thread; also if `threads` is `Some(0)`.
///
/// ```
/// use hemi_engine::{cpu, DType, Device, Tensor};
/// // At the top of `main`, before any tensor work:
/// cpu::init_threads(Some(2))?;
/// let x = Tensor::ones([4, 4], DType::F32, Device::Cpu)?;
/// assert_eq!(x.matmul(&x)?.to_vec::<f32>()?, vec![4.0; 16]);
/// assert!(cpu::init_threads(Some(2)).is_err(), "the pool is built once per process");
/// # Ok::<(), hemi_engine::Error>(())
/// ```
pub fn init_threads(threads: Option<usize>) -> Result<()> {
    const OP: &str = "cpu::init_threads";
    if threads == Some(0) {
        return Err(Error::invalid(OP, "a pool needs at least one thread"));
    }
    let builder = rayon::ThreadPoolBuilder::new().num_threads(threads.unwrap_or(0));
    let n = threads.unwrap_or_else(|| {
        // What rayon would pick: its environment variable, else the logical CPUs.
        std::env::var("RAYON_NUM_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n: &usize| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    });
    // (With one thread in all, the caller would be the only worker, and ops from any other
    // thread would wait for it forever: a worker of its own then.)
    let builder = if n >= 2 {
        builder.use_current_thread()
    } else {
        builder
    };
    builder
        .build_global()
        .map_err(|e| Error::invalid(OP, format!("rayon's global pool: {e}")))
}
