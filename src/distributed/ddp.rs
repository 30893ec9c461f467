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
    /// Broadcast rank 0's buffers (batch norm running statistics) at every forward, as
    /// PyTorch's `broadcast_buffers=True`: every rank evaluates with the same statistics.
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
    /// Gradients not yet ready, per bucket.
    pending: Vec<usize>,
    /// Buckets are launched in index order (the same on every rank); the next to launch.
    next_launch: usize,
}

/// A bucket whose all-reduce was started, handed to the communication thread to wait for,
/// and what comes back.
type Job = (usize, Tensor, Box<dyn Work>);
type Done = (usize, Result<Tensor>);

/// The shared state behind the gradient hooks.
struct Reducer {
    comm: Arc<dyn Communicator>,
    params: Vec<Tensor>,
    buckets: Vec<Bucket>,
    bucket_of: HashMap<TensorId, usize>,
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

impl Reducer {
    /// Hook body: `param`'s gradient is ready.
    fn mark_ready(self: &Arc<Self>, param: &Tensor) -> Result<()> {
        // A world of one has nothing to average (its gradients stay as computed).
        if !self.sync.load(Ordering::Acquire) || self.comm.world_size() == 1 {
            return Ok(());
        }
        let Some(&b) = self.bucket_of.get(&param.id()) else {
            return Ok(());
        };
        let mut pass = lock(&self.pass);
        if !pass.active {
            pass.active = true;
            pass.pending = self.buckets.iter().map(|b| b.params.len()).collect();
            pass.next_launch = 0;
            let me = Arc::clone(self);
            queue_callback(move || me.finish())?;
        }
        pass.pending[b] = pass.pending[b].saturating_sub(1);
        while pass.next_launch < self.buckets.len() && pass.pending[pass.next_launch] == 0 {
            let i = pass.next_launch;
            pass.next_launch += 1;
            self.launch(i)?;
        }
        Ok(())
    }

    /// Flattens bucket `i`'s gradients (zeros for a parameter without one), divides by the
    /// world size, starts the all-reduce — here, on the thread running the backward pass, so
    /// collectives start in the same order on every rank, also when other collectives
    /// (synchronized batch norm's) run in the same pass — and hands the running collective
    /// to the communication thread, which waits for it (driving MPI's progress meanwhile).
    fn launch(&self, i: usize) -> Result<()> {
        let _g = no_grad();
        let flats = self.buckets[i]
            .params
            .iter()
            .map(|&p| {
                let param = &self.params[p];
                match param.grad() {
                    Some(g) => g.contiguous()?.reshape([g.elem_count()]),
                    None => Tensor::zeros([param.elem_count()], param.dtype(), param.device()),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&Tensor> = flats.iter().collect();
        let flat = Tensor::cat(&refs, 0)?
            .div_scalar(self.comm.world_size() as f64)?
            .contiguous()?;
        let jobs = lock(&self.jobs);
        let sender = jobs.as_ref().ok_or_else(|| thread_gone("launch"))?;
        let work = self.comm.all_reduce_start(&flat, ReduceOp::Sum)?;
        sender
            .send((i, flat, work))
            .map_err(|_| thread_gone("launch"))
    }

    /// End of a synchronized backward pass: launches what is left, waits for every bucket
    /// and writes the averaged gradients back.
    fn finish(&self) -> Result<()> {
        let launched_before = {
            let mut pass = lock(&self.pass);
            let before = pass.next_launch;
            let rest = before..self.buckets.len();
            pass.next_launch = self.buckets.len();
            pass.active = false;
            rest
        };
        for i in launched_before {
            self.launch(i)?;
        }
        let done = lock(&self.done);
        for _ in 0..self.buckets.len() {
            let (i, flat) = done.recv().map_err(|_| thread_gone("finish"))?;
            self.write_back(i, &flat?)?;
        }
        Ok(())
    }

    fn write_back(&self, i: usize, flat: &Tensor) -> Result<()> {
        let _g = no_grad();
        let mut offset = 0;
        for &p in &self.buckets[i].params {
            let param = &self.params[p];
            let n = param.elem_count();
            let avg = flat.narrow(0, offset, n)?.reshape(param.shape().clone())?;
            offset += n;
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
///   goes on. Buckets start in index order, from the backward pass's thread, on every rank. At the end of the pass (a callback queued
///   with [`queue_callback`]) the rest are started, all are awaited and written back, so
///   `backward()` returns with averaged gradients — or with the collective's error.
/// - Gradients of parameters that no rank used are zeros after a synchronized pass
///   (PyTorch leaves those `None`). In a world of one nothing is reduced or copied.
/// - [`no_sync`](Self::no_sync) skips the reduction: gradients accumulate locally, and the
///   first synchronized backward after it averages the accumulated sums.
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
        let params = module.parameters();
        let buckets = plan_buckets(&params, config.bucket_cap_bytes);
        let bucket_of = buckets
            .iter()
            .enumerate()
            .flat_map(|(b, bucket)| bucket.params.iter().map(move |&p| (p, b)))
            .map(|(p, b)| (params[p].id(), b))
            .collect();
        let (job_tx, job_rx) = channel::<Job>();
        let (done_tx, done_rx) = channel::<Done>();
        let worker = std::thread::Builder::new()
            .name("hemi-ddp-comm".into())
            .spawn(move || {
                for (i, flat, work) in job_rx {
                    let r = work.wait().map(|()| flat);
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
            bucket_of,
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
    /// Broadcasts rank 0's buffers (when configured) and runs the wrapped module.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.config.broadcast_buffers && self.reducer.comm.world_size() > 1 {
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
}
