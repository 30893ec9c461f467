//! Extension points of the backward pass: hooks that run when a leaf's gradient is ready,
//! callbacks queued to run when the whole pass has finished, and user-defined differentiable
//! ops. Data-parallel training is built on them (`hemi::distributed`): it starts reducing a
//! bucket of gradients as soon as the bucket's last gradient is accumulated, and waits for
//! every bucket in a callback at the end of the pass.

use crate::{Error, Result, Tensor};
use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A hook on a leaf tensor, called with the leaf after a backward pass accumulated into its
/// `.grad` (PyTorch's `register_post_accumulate_grad_hook`).
pub type GradHook = Arc<dyn Fn(&Tensor) -> Result<()> + Send + Sync>;

/// A callback queued by [`queue_callback`].
type Callback = Box<dyn FnOnce() -> Result<()>>;

thread_local! {
    static DEPTH: Cell<usize> = const { Cell::new(0) };
    static QUEUED: RefCell<Vec<Callback>> = const { RefCell::new(Vec::new()) };
}

/// Removes its hook from the tensor when [`HookHandle::remove`] is called (dropping the handle
/// keeps the hook, as PyTorch's `RemovableHandle` does).
#[derive(Debug)]
pub struct HookHandle {
    tensor: Tensor,
    id: u64,
}

impl HookHandle {
    /// Unregisters the hook.
    pub fn remove(self) {
        self.tensor
            .0
            .grad_hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(id, _)| *id != self.id);
    }
}

impl Tensor {
    /// Registers `hook`, called with this leaf after each backward pass accumulated its
    /// gradient (`.grad()` then holds the new value). Hooks run in registration order, on the
    /// thread running the backward pass; an error from a hook stops the pass with that error.
    ///
    /// ```
    /// use hemi_engine::{Tensor, Device};
    /// use std::sync::{Arc, atomic::{AtomicUsize, Ordering}};
    /// let w = Tensor::from_vec(vec![1.0f32, 2.0], [2], Device::Cpu)?.requires_grad_(true)?;
    /// let seen = Arc::new(AtomicUsize::new(0));
    /// let s = seen.clone();
    /// let h = w.register_post_accumulate_grad_hook(Arc::new(move |t: &Tensor| {
    ///     s.fetch_add(t.grad().map_or(0, |g| g.elem_count()), Ordering::SeqCst);
    ///     Ok(())
    /// }))?;
    /// w.mul_scalar(3.0)?.sum_all()?.backward()?;
    /// assert_eq!(seen.load(Ordering::SeqCst), 2);
    /// h.remove();
    /// # Ok::<(), hemi_engine::Error>(())
    /// ```
    pub fn register_post_accumulate_grad_hook(&self, hook: GradHook) -> Result<HookHandle> {
        if !self.is_leaf() || !self.requires_grad() {
            return Err(Error::Autograd(
                "post-accumulate-grad hooks can only be registered on leaf tensors that \
                 require grad"
                    .into(),
            ));
        }
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        self.0
            .grad_hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((id, hook));
        Ok(HookHandle {
            tensor: self.clone(),
            id,
        })
    }

    /// Runs this leaf's post-accumulate-grad hooks.
    pub(crate) fn run_grad_hooks(&self) -> Result<()> {
        let hooks: Vec<GradHook> = self
            .0
            .grad_hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(_, h)| h.clone())
            .collect();
        hooks.iter().try_for_each(|h| h(self))
    }
}

/// Queues `f` to run on this thread once the backward pass now running has finished (after
/// every gradient was accumulated and every hook ran; PyTorch's `queue_callback`). Callbacks
/// run in the order queued; the first error is returned by `backward()`. When the pass fails
/// (or an earlier callback did) the remaining callbacks are dropped without running. Errors
/// when no backward pass is running on this thread.
pub fn queue_callback(f: impl FnOnce() -> Result<()> + 'static) -> Result<()> {
    if DEPTH.with(Cell::get) == 0 {
        return Err(Error::Autograd(
            "queue_callback can only be called during a backward pass (from a hook)".into(),
        ));
    }
    QUEUED.with(|q| q.borrow_mut().push(Box::new(f)));
    Ok(())
}

/// Marks a backward pass as running on this thread while alive; when the outermost pass ends,
/// [`BackwardScope::finish`] runs the queued callbacks.
pub(crate) struct BackwardScope(());

impl BackwardScope {
    pub(crate) fn enter() -> Self {
        DEPTH.with(|d| d.set(d.get() + 1));
        BackwardScope(())
    }

    /// Ends the pass with `result`: on success the outermost pass runs the queued callbacks
    /// (callbacks they queue run too); on failure, or after a callback failed, the rest are
    /// dropped without running (a callback that must clean up does so in its drop).
    pub(crate) fn finish(self, result: Result<()>) -> Result<()> {
        let outermost = DEPTH.with(Cell::get) == 1;
        if !outermost {
            return result;
        }
        let mut result = result;
        loop {
            let batch = QUEUED.with(|q| std::mem::take(&mut *q.borrow_mut()));
            if batch.is_empty() {
                break;
            }
            for f in batch {
                if result.is_ok() {
                    result = f();
                }
            }
        }
        result
    }
}

impl Drop for BackwardScope {
    fn drop(&mut self) {
        DEPTH.with(|d| d.set(d.get() - 1));
        if DEPTH.with(Cell::get) == 0 {
            // Dropped outside the borrow: a callback's drop may run code of its own.
            let dropped = QUEUED.with(|q| std::mem::take(&mut *q.borrow_mut()));
            drop(dropped);
        }
    }
}

/// Records a user-defined differentiable op, like a `torch.autograd.Function`: `output` was
/// computed from `inputs` by any means (other ops, a collective, host code) and is returned
/// as a new tensor whose backward calls `backward(grad_output)`, which must return one
/// optional gradient per input, each of its input's shape. Nothing is recorded when grad
/// mode is off or no input requires grad.
///
/// ```
/// use hemi_engine::{autograd::custom_op, no_grad, Tensor, Device};
/// let x = Tensor::from_vec(vec![1.0f32, -2.0], [2], Device::Cpu)?.requires_grad_(true)?;
/// // y = 3x, with a hand-written backward.
/// let y = { let _g = no_grad(); x.mul_scalar(3.0)? };
/// let y = custom_op(y, "triple", &[&x], |g| Ok(vec![Some(g.mul_scalar(3.0)?)]));
/// y.sum_all()?.backward()?;
/// assert_eq!(x.grad().unwrap().to_vec::<f32>()?, vec![3.0, 3.0]);
/// # Ok::<(), hemi_engine::Error>(())
/// ```
pub fn custom_op<F>(output: Tensor, name: &'static str, inputs: &[&Tensor], backward: F) -> Tensor
where
    F: Fn(&Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync + 'static,
{
    super::track(output.detach(), name, inputs, backward)
}
