//! [`DistributedDataParallel`]: gradients averaged over ranks in buckets that start reducing
//! during the backward pass.

use super::{Communicator, ReduceOp, Work};
use crate::autograd::{queue_callback, HookHandle};
use crate::nn::{Module, Visitor};
use crate::{no_grad, DType, Device, Error, MemoryFormat, Result, Tensor, TensorId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// Options of [`DistributedDataParallel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DdpConfig {
    /// Largest bucket of gradients reduced in one collective, in bytes (PyTorch's
    /// `bucket_cap_mb`, 25 MiB). Smaller buckets start earlier in the backward pass; larger
    /// ones pay the per-collective latency less often. A parameter larger than the cap gets a
    /// bucket of its own.
    pub bucket_cap_bytes: usize,
    /// Broadcast rank 0's buffers (batch norm running statistics) at every training forward
    /// (grad mode on, outside `no_sync`), as PyTorch's `broadcast_buffers=True`: every rank
    /// then holds the same statistics.
    pub broadcast_buffers: bool,
}

impl Default for DdpConfig {
    fn default() -> Self {
        DdpConfig {
            bucket_cap_bytes: 25 << 20,
            broadcast_buffers: true,
        }
    }
}

/// Gradients of parameters of one dtype and device, reduced together as one flat tensor.
#[derive(Debug)]
struct Bucket {
    /// Indices into `Reducer::params`, in the order gradients usually become ready (reverse
    /// registration order).
    params: Vec<usize>,
}

/// Where the current synchronized backward pass stands.
#[derive(Debug, Default)]
struct Pass {
    /// A synchronized backward pass is running (its finalizing callback is queued).
    active: bool,
    /// Per parameter: its gradient was marked ready in this pass (a parameter accumulated
    /// twice in one pass counts once).
    ready: Vec<bool>,
    /// Gradients not yet ready, per bucket.
    pending: Vec<usize>,
    /// Buckets are launched in index order (the same on every rank); the next to launch.
    next_launch: usize,
    /// Buckets handed to the communication thread whose results were not received yet.
    in_flight: usize,
}

/// A bucket whose all-reduce was started, handed to the communication thread to wait for,
/// and what comes back.
type Job = (usize, Box<dyn Work>);
type Done = (usize, Result<Tensor>);

/// The shared state behind the gradient hooks.
struct Reducer {
    comm: Arc<dyn Communicator>,
    params: Vec<Tensor>,
    buckets: Vec<Bucket>,
    /// Parameter id → (index into `params`, bucket).
    slot_of: HashMap<TensorId, (usize, usize)>,
    pass: Mutex<Pass>,
    sync: AtomicBool,
    jobs: Mutex<Option<Sender<Job>>>,
    done: Mutex<Receiver<Done>>,
}

impl std::fmt::Debug for Reducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reducer")
            .field("comm", &self.comm)
            .field("params", &self.params.len())
            .field("buckets", &self.buckets)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Owned by the end-of-pass callback: if the backward pass fails, the callback is dropped
/// without running and this resets the pass (receiving the buckets still in flight, so the
/// next pass starts clean).
struct PassGuard(Arc<Reducer>);

impl Drop for PassGuard {
    fn drop(&mut self) {
        self.0.abandon();
    }
}

impl Reducer {
    /// Hook body: `param`'s gradient is ready.
    fn mark_ready(self: &Arc<Self>, param: &Tensor) -> Result<()> {
        // A world of one has nothing to average (its gradients stay as computed).
        if !self.sync.load(Ordering::Acquire) || self.comm.world_size() == 1 {
            return Ok(());
        }
        let Some(&(p, b)) = self.slot_of.get(&param.id()) else {
            return Ok(());
        };
        let mut pass = lock(&self.pass);
        if !pass.active {
            pass.active = true;
            pass.ready = vec![false; self.params.len()];
            pass.pending = self.buckets.iter().map(|b| b.params.len()).collect();
            pass.next_launch = 0;
            pass.in_flight = 0;
            let guard = PassGuard(Arc::clone(self));
            queue_callback(move || guard.0.finish())?;
        }
        if std::mem::replace(&mut pass.ready[p], true) {
            return Ok(());
        }
        pass.pending[b] -= 1;
        while pass.next_launch < self.buckets.len() && pass.pending[pass.next_launch] == 0 {
            let i = pass.next_launch;
            pass.next_launch += 1;
            self.launch(i)?;
            pass.in_flight += 1;
        }
        Ok(())
    }

    /// Flattens bucket `i`'s gradients (zeros for a parameter without one) followed by one
    /// "has a gradient" flag per parameter, divides by the world size, starts the all-reduce
    /// — here, on the thread running the backward pass, so collectives start in the same
    /// order on every rank, also when other collectives (synchronized batch norm's) run in the
    /// same pass — and hands the running collective to the communication thread, which waits
    /// for it (driving MPI's progress meanwhile).
    fn launch(&self, i: usize) -> Result<()> {
        let _g = no_grad();
        let bucket = &self.buckets[i].params;
        let (dtype, device) = (
            self.params[bucket[0]].dtype(),
            self.params[bucket[0]].device(),
        );
        let mut flags = Vec::with_capacity(bucket.len());
        let mut flats = bucket
            .iter()
            .map(|&p| {
                let param = &self.params[p];
                flags.push(f32::from(u8::from(param.grad().is_some())));
                match param.grad() {
                    Some(g) => g.contiguous()?.reshape([g.elem_count()]),
                    None => Tensor::zeros([param.elem_count()], dtype, device),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let n = flags.len();
        flats.push(
            Tensor::from_vec(flags, [n], Device::Cpu)?
                .to_dtype(dtype)?
                .to_device(device)?,
        );
        let refs: Vec<&Tensor> = flats.iter().collect();
        let flat = Tensor::cat(&refs, 0)?
            .div_scalar(self.comm.world_size() as f64)?
            .contiguous()?;
        let jobs = lock(&self.jobs);
        let sender = jobs.as_ref().ok_or_else(|| thread_gone("launch"))?;
        let work = self.comm.all_reduce_start(&flat, ReduceOp::Sum)?;
        sender.send((i, work)).map_err(|_| thread_gone("launch"))
    }

    /// End of a synchronized backward pass: launches what is left, waits for every bucket
    /// and writes the averaged gradients back. Receives every launched bucket's result even
    /// after an error (the first error is returned), so nothing of this pass is left for the
    /// next.
    fn finish(&self) -> Result<()> {
        let mut first_error = Ok(());
        let mut pass = lock(&self.pass);
        while pass.next_launch < self.buckets.len() {
            let i = pass.next_launch;
            pass.next_launch += 1;
            match self.launch(i) {
                Ok(()) => pass.in_flight += 1,
                Err(e) => {
                    first_error = Err(e);
                    break;
                }
            }
        }
        let done = lock(&self.done);
        while pass.in_flight > 0 {
            let Ok((i, flat)) = done.recv() else {
                pass.in_flight = 0;
                return Err(thread_gone("finish"));
            };
            pass.in_flight -= 1;
            if first_error.is_ok() {
                first_error = flat.and_then(|f| self.write_back(i, &f));
            }
        }
        pass.active = false;
        first_error
    }

    /// A pass whose callback never ran (the backward pass failed): receive what is in flight
    /// and reset.
    fn abandon(&self) {
        let mut pass = lock(&self.pass);
        if !pass.active {
            return;
        }
        let done = lock(&self.done);
        while pass.in_flight > 0 && done.recv().is_ok() {
            pass.in_flight -= 1;
        }
        pass.in_flight = 0;
        pass.active = false;
    }

    /// Writes bucket `i`'s averages into the gradients; a parameter that had no gradient on
    /// any rank keeps none (as in PyTorch).
    fn write_back(&self, i: usize, flat: &Tensor) -> Result<()> {
        let _g = no_grad();
        let bucket = &self.buckets[i].params;
        let total = flat.elem_count();
        let used = flat
            .narrow(0, total - bucket.len(), bucket.len())?
            .to_f64_vec()?;
        let mut offset = 0;
        for (&p, used) in bucket.iter().zip(used) {
            let param = &self.params[p];
            let n = param.elem_count();
            let avg = flat.narrow(0, offset, n)?.reshape(param.shape().clone())?;
            offset += n;
            if used == 0.0 {
                continue;
            }
            match param.grad() {
                Some(g) if g.layout().is_contiguous() && g.dtype() == avg.dtype() => {
                    g.assign(&avg)?
                }
                _ => param.set_grad(Some(avg.deep_copy()?))?,
            }
        }
        Ok(())
    }
}

fn thread_gone(op: &'static str) -> Error {
    Error::Distributed {
        op,
        msg: "the gradient communication thread has stopped".into(),
    }
}

/// PyTorch's `DistributedDataParallel`: wraps a module so that after every `backward()` each
/// parameter's gradient is the average of the ranks' gradients.
///
/// - At construction rank 0's parameters and buffers are broadcast to every rank.
/// - Gradients are grouped into buckets of at most [`DdpConfig::bucket_cap_bytes`] (reverse
///   registration order, one dtype and device each). A hook on every parameter counts ready
///   gradients; when a bucket is complete it is flattened, divided by the world size, its
///   all-reduce is started, and a communication thread waits for it while the backward pass
///   goes on. Buckets start in index order, from the backward pass's thread, on every rank.
///   At the end of the pass (a callback queued with [`queue_callback`]) the rest are
///   started, all are awaited and written back, so `backward()` returns with averaged
///   gradients — or with the collective's error (a failed pass leaves nothing behind for the
///   next). In a world of one nothing is reduced or copied.
/// - Parameters without a gradient: a parameter that got none on this rank counts as zero in
///   the average; one that got none on any rank keeps `None` (as in PyTorch). As in PyTorch
///   without `find_unused_parameters`, the set of parameters that receive gradients should
///   be the same on every rank: a bucket holding a parameter unused here is started only at
///   the end of the pass, which may reorder it against other collectives of the pass
///   (synchronized batch norm's) on the ranks that used it; and a rank whose backward reaches
///   no parameter at all joins no reduction.
/// - [`no_sync`](Self::no_sync) skips the reduction: gradients accumulate locally, and the
///   first synchronized backward after it averages the accumulated sums. Whether a pass
///   synchronizes is decided when its backward runs (PyTorch decides at the forward).
/// - Parameters shared between layers are reduced once.
/// - With fp16 autocast and a GradScaler the averaged gradients carry any rank's inf/NaN to
///   all ranks, so every rank skips the same steps; for steps whose gradients were not
///   reduced, give the scaler [`found_inf_sync`](super::found_inf_sync).
///
/// The wrapper is a [`Module`] with the wrapped module's parameter names, so optimizers and
/// checkpoints see the same model.
///
/// ```
/// use hemi::distributed::{DdpConfig, DistributedDataParallel, SingleProcess};
/// use hemi::nn::{Linear, Module};
/// use hemi::{DType, Device, Tensor};
/// use std::sync::Arc;
/// let model = Linear::new(4, 2, true, Device::Cpu)?;
/// let ddp = DistributedDataParallel::new(model, Arc::new(SingleProcess), DdpConfig::default())?;
/// let x = Tensor::randn([3, 4], DType::F32, Device::Cpu)?;
/// ddp.forward(&x)?.sum_all()?.backward()?;
/// assert!(ddp.parameters().iter().all(|p| p.grad().is_some()));
/// # Ok::<(), hemi::Error>(())
/// ```
pub struct DistributedDataParallel<M: Module> {
    module: M,
    reducer: Arc<Reducer>,
    hooks: Vec<HookHandle>,
    worker: Option<JoinHandle<()>>,
    config: DdpConfig,
}

impl<M: Module> std::fmt::Debug for DistributedDataParallel<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DistributedDataParallel")
            .field("module", &self.module)
            .field("reducer", &self.reducer)
            .field("config", &self.config)
            .finish()
    }
}

/// Splits parameters (indices, reverse registration order) into buckets.
fn plan_buckets(params: &[Tensor], cap: usize) -> Vec<Bucket> {
    let mut buckets: Vec<Bucket> = Vec::new();
    let mut open: HashMap<(DType, Device), (usize, usize)> = HashMap::new(); // -> (bucket, bytes)
    for (i, p) in params.iter().enumerate().rev() {
        if !p.requires_grad() {
            continue;
        }
        let bytes = p.elem_count() * p.dtype().size_in_bytes();
        let key = (p.dtype(), p.device());
        match open.get_mut(&key) {
            Some((b, used)) if *used + bytes <= cap => {
                buckets[*b].params.push(i);
                *used += bytes;
            }
            _ => {
                open.insert(key, (buckets.len(), bytes));
                buckets.push(Bucket { params: vec![i] });
            }
        }
    }
    buckets
}

impl<M: Module> DistributedDataParallel<M> {
    /// Wraps `module`: broadcasts rank 0's parameters and buffers, plans the buckets,
    /// registers the gradient hooks and starts the communication thread. Every rank must
    /// construct it with the same model architecture.
    pub fn new(module: M, comm: Arc<dyn Communicator>, config: DdpConfig) -> Result<Self> {
        if config.bucket_cap_bytes == 0 {
            return Err(Error::invalid(
                "DistributedDataParallel",
                "bucket_cap_bytes must be positive",
            ));
        }
        {
            let _g = no_grad();
            for (_, t) in module.state_dict() {
                comm.broadcast(&t, 0)?;
            }
        }
        // Each tensor once (a parameter shared by two layers is reduced once).
        let mut seen = std::collections::HashSet::new();
        let params: Vec<Tensor> = module
            .parameters()
            .into_iter()
            .filter(|p| seen.insert(p.id()))
            .collect();
        let buckets = plan_buckets(&params, config.bucket_cap_bytes);
        let slot_of = buckets
            .iter()
            .enumerate()
            .flat_map(|(b, bucket)| bucket.params.iter().map(move |&p| (p, b)))
            .map(|(p, b)| (params[p].id(), (p, b)))
            .collect();
        let (job_tx, job_rx) = channel::<Job>();
        let (done_tx, done_rx) = channel::<Done>();
        let worker = std::thread::Builder::new()
            .name("hemi-ddp-comm".into())
            .spawn(move || {
                for (i, work) in job_rx {
                    // The result as its own tensor (MPI's receive buffer, not copied back into
                    // the bucket, which the write-back reads only).
                    let r = work.wait_output();
                    if done_tx.send((i, r)).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| Error::Distributed {
                op: "DistributedDataParallel",
                msg: format!("cannot start the communication thread: {e}"),
            })?;
        let reducer = Arc::new(Reducer {
            comm,
            params,
            buckets,
            slot_of,
            pass: Mutex::new(Pass::default()),
            sync: AtomicBool::new(true),
            jobs: Mutex::new(Some(job_tx)),
            done: Mutex::new(done_rx),
        });
        let hooks = reducer
            .params
            .iter()
            .filter(|p| p.requires_grad())
            .map(|p| {
                let r = Arc::downgrade(&reducer);
                p.register_post_accumulate_grad_hook(Arc::new(move |t: &Tensor| {
                    r.upgrade().map_or(Ok(()), |r| r.mark_ready(t))
                }))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(DistributedDataParallel {
            module,
            reducer,
            hooks,
            worker: Some(worker),
            config,
        })
    }

    /// The wrapped module.
    pub fn module(&self) -> &M {
        &self.module
    }

    /// The wrapped module, mutably (e.g. to switch to eval mode).
    pub fn module_mut(&mut self) -> &mut M {
        &mut self.module
    }

    /// The communicator.
    pub fn communicator(&self) -> &Arc<dyn Communicator> {
        &self.reducer.comm
    }

    /// The options.
    pub fn config(&self) -> DdpConfig {
        self.config
    }

    /// Number of gradient buckets.
    pub fn bucket_count(&self) -> usize {
        self.reducer.buckets.len()
    }

    /// Skips the gradient reduction until the guard drops (PyTorch's `no_sync()`): for
    /// gradient accumulation, run the first micro-batches' backward passes inside it and the
    /// last one outside.
    pub fn no_sync(&self) -> NoSyncGuard<'_> {
        let prev = self.reducer.sync.swap(false, Ordering::AcqRel);
        NoSyncGuard {
            flag: &self.reducer.sync,
            prev,
        }
    }

    fn shutdown(&mut self) {
        for h in self.hooks.drain(..) {
            h.remove();
        }
        lock(&self.reducer.jobs).take();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

impl<M: Module> Drop for DistributedDataParallel<M> {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Restores gradient synchronization when dropped. See
/// [`DistributedDataParallel::no_sync`].
#[derive(Debug)]
pub struct NoSyncGuard<'a> {
    flag: &'a AtomicBool,
    prev: bool,
}

impl Drop for NoSyncGuard<'_> {
    fn drop(&mut self) {
        self.flag.store(self.prev, Ordering::Release);
    }
}

impl<M: Module> Module for DistributedDataParallel<M> {
    /// Broadcasts rank 0's buffers (when configured, in grad mode and outside `no_sync`, as
    /// PyTorch does) and runs the wrapped module.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let syncing = crate::is_grad_enabled() && self.reducer.sync.load(Ordering::Acquire);
        if self.config.broadcast_buffers && syncing && self.reducer.comm.world_size() > 1 {
            let _g = no_grad();
            for (_, b) in self.module.named_buffers() {
                self.reducer.comm.broadcast(&b, 0)?;
            }
        }
        self.module.forward(x)
    }
    fn visit_parameters(&self, prefix: &str, f: &mut Visitor<'_>) {
        self.module.visit_parameters(prefix, f)
    }
    fn visit_buffers(&self, prefix: &str, f: &mut Visitor<'_>) {
        self.module.visit_buffers(prefix, f)
    }
    fn set_training(&mut self, on: bool) {
        self.module.set_training(on)
    }
    fn is_training(&self) -> bool {
        self.module.is_training()
    }
    fn to_memory_format(&mut self, format: MemoryFormat) {
        self.module.to_memory_format(format)
    }
    fn for_each_batch_norm(&mut self, f: &mut dyn FnMut(&mut crate::nn::BatchNorm2d)) {
        self.module.for_each_batch_norm(f)
    }
}
