//! Define-by-run reverse-mode autograd.
//!
//! Every op that has an input requiring grad (while grad mode is on) records a node on its
//! output: the inputs and a backward closure. `backward()` walks the graph in reverse
//! topological order, sums gradients per tensor, accumulates into the `.grad` of leaves and
//! frees the graph (unless asked to retain it). Gradients of non-leaf tensors are not kept.

mod hooks;

pub use hooks::{custom_op, queue_callback, GradHook, HookHandle};

use crate::{Error, Result, Tensor, TensorId};
use std::cell::Cell;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

/// Gradient function of one recorded op: output gradient in, one optional gradient per input
/// out (`None` where an input needs none).
pub(crate) type BackwardFn = dyn Fn(&Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync;

/// A recorded op.
pub(crate) struct Node {
    pub(crate) name: &'static str,
    /// The inputs' graph handles (`Tensor::graph_handle`): leaves that require grad, and
    /// data-less handles of everything else, so the graph alone keeps no activation alive.
    pub(crate) inputs: Vec<Tensor>,
    pub(crate) backward: Box<BackwardFn>,
}

/// Where a tensor stands in the graph.
pub(crate) enum NodeState {
    /// Created by the user or outside grad mode.
    Leaf,
    /// Produced by a recorded op.
    Op(Arc<Node>),
    /// Produced by a recorded op whose graph a backward pass has freed.
    Freed(&'static str),
}

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Whether ops currently record the graph (thread-local; on by default).
pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

/// Restores the previous grad mode when dropped. See [`no_grad`].
#[derive(Debug)]
pub struct GradModeGuard {
    prev: bool,
}

impl Drop for GradModeGuard {
    fn drop(&mut self) {
        GRAD_ENABLED.with(|g| g.set(self.prev));
    }
}

/// Sets grad mode for the current thread until the guard drops.
pub fn set_grad_enabled(on: bool) -> GradModeGuard {
    let prev = GRAD_ENABLED.with(|g| g.replace(on));
    GradModeGuard { prev }
}

/// Disables graph recording until the guard drops, like `torch.no_grad()`.
///
/// ```
/// use hemi_engine::{no_grad, Tensor, DType, Device};
/// let w = Tensor::ones([2], DType::F32, Device::Cpu)?.requires_grad_(true)?;
/// let y = { let _g = no_grad(); w.mul_scalar(2.0)? };
/// assert!(!y.requires_grad());
/// # Ok::<(), hemi_engine::Error>(())
/// ```
pub fn no_grad() -> GradModeGuard {
    set_grad_enabled(false)
}

/// A tensor saved for a backward pass, with the version its storage had when it was saved.
/// [`Saved::get`] fails (as PyTorch does) when an in-place write changed the storage since:
/// the gradient would otherwise be computed from the wrong values.
pub(crate) struct Saved {
    op: &'static str,
    tensor: Tensor,
    version: u64,
}

impl Saved {
    /// Saves `t` (detached) for the backward of `op`.
    pub(crate) fn new(op: &'static str, t: &Tensor) -> Saved {
        Saved {
            op,
            tensor: t.detach(),
            version: t.version(),
        }
    }
    /// The saved tensor, or an error when it was modified in place after it was saved.
    pub(crate) fn get(&self) -> Result<Tensor> {
        let now = self.tensor.version();
        if now != self.version {
            return Err(Error::Autograd(format!(
                "one of the tensors needed for the gradient of `{}` has been modified by an \
                 in-place operation: a {:?} {} tensor is at version {now}; expected version {} \
                 instead (it was saved for backward before the in-place write)",
                self.op,
                self.tensor.dims(),
                self.tensor.dtype(),
                self.version
            )));
        }
        Ok(self.tensor.clone())
    }
}

/// Saves `t` for `op` when the gradient needs it (`keep`), else nothing.
pub(crate) fn save_if(op: &'static str, t: &Tensor, keep: bool) -> Option<Saved> {
    keep.then(|| Saved::new(op, t))
}

/// The saved tensor (version-checked), or `fallback` when nothing was saved because the
/// gradient does not read it.
pub(crate) fn get_or(saved: &Option<Saved>, fallback: &Tensor) -> Result<Tensor> {
    saved
        .as_ref()
        .map_or_else(|| Ok(fallback.clone()), Saved::get)
}

/// Records `backward` on `out` when grad mode is on and any input requires grad.
pub(crate) fn track<F>(out: Tensor, name: &'static str, inputs: &[&Tensor], backward: F) -> Tensor
where
    F: Fn(&Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync + 'static,
{
    if !is_grad_enabled() || !inputs.iter().any(|t| t.requires_grad()) {
        return out;
    }
    out.set_requires_grad_flag(true);
    *out.node() = NodeState::Op(Arc::new(Node {
        name,
        inputs: inputs.iter().map(|&t| t.graph_handle()).collect(),
        backward: Box::new(backward),
    }));
    out
}

fn node_of(t: &Tensor) -> Result<Option<Arc<Node>>> {
    match &*t.node() {
        NodeState::Leaf => Ok(None),
        NodeState::Op(n) => Ok(Some(n.clone())),
        NodeState::Freed(name) => Err(Error::Autograd(format!(
            "trying to backward through the graph a second time (through `{name}`); \
             pass retain_graph = true to the first backward"
        ))),
    }
}

/// The graph below `root`: every tensor reachable through nodes (by id), and how many
/// recorded edges lead into each from reachable nodes (its consumers still to run).
struct Plan {
    tensors: HashMap<TensorId, Tensor>,
    consumers: HashMap<TensorId, usize>,
}

fn plan(root: &Tensor) -> Result<Plan> {
    let mut tensors = HashMap::from([(root.id(), root.clone())]);
    let mut consumers: HashMap<TensorId, usize> = HashMap::new();
    let mut stack = vec![root.clone()];
    while let Some(t) = stack.pop() {
        let Some(node) = node_of(&t)? else { continue };
        for i in node.inputs.iter().filter(|i| i.requires_grad()) {
            *consumers.entry(i.id()).or_insert(0) += 1;
            if let std::collections::hash_map::Entry::Vacant(e) = tensors.entry(i.id()) {
                e.insert(i.clone());
                stack.push(i.clone());
            }
        }
    }
    Ok(Plan { tensors, consumers })
}

fn accumulate(map: &mut HashMap<TensorId, Tensor>, t: &Tensor, g: Tensor) -> Result<()> {
    let merged = match map.remove(&t.id()) {
        Some(prev) => prev.add(&g)?,
        None => g,
    };
    map.insert(t.id(), merged);
    Ok(())
}

/// Adds `g` to a leaf's `.grad` as PyTorch's `AccumulateGrad` does: in place into an existing
/// gradient of the same dtype that owns its whole contiguous buffer; the first gradient is
/// stored as is — keeping its memory format, e.g. channels-last — unless its buffer is shared
/// with other tensors or it is a strided view (then it is copied, so a later in-place
/// accumulation cannot write into them).
fn accumulate_into_leaf(t: &Tensor, g: Tensor) -> Result<()> {
    match t.grad() {
        Some(prev) if prev.dtype() == g.dtype() && prev.owns_whole_buffer() => prev.add_(&g),
        Some(prev) => t.set_grad(Some(prev.add(&g)?)),
        None if g.densely_owns_buffer() && !g.storage_is_shared() => t.set_grad(Some(g)),
        None => t.set_grad(Some(g.deep_copy()?)),
    }
}

/// Runs the backward pass from `root` with upstream gradient `seed`.
pub(crate) fn run_backward(root: &Tensor, seed: Tensor, retain_graph: bool) -> Result<()> {
    let scope = hooks::BackwardScope::enter();
    let result = backward_pass(root, seed, retain_graph);
    scope.finish(result)
}

/// Runs the nodes in a topological order chosen as PyTorch's engine does: a tensor is ready
/// once every node consuming it has run; among ready tensors leaves go first — so a
/// parameter's gradient is accumulated (and its hooks run, e.g. data-parallel bucket
/// reductions) as soon as it is complete, not after the whole pass — then the most recently
/// created op (its id), i.e. the reverse of the forward order.
fn backward_pass(root: &Tensor, seed: Tensor, retain_graph: bool) -> Result<()> {
    let _guard = no_grad();
    let _policy = crate::cast_policy::suspend();
    let Plan {
        mut tensors,
        mut consumers,
    } = plan(root)?;
    let mut grads: HashMap<TensorId, Tensor> = HashMap::new();
    grads.insert(root.id(), seed);
    let mut ready = BinaryHeap::from([(root.is_leaf(), root.id())]);
    // Each tensor leaves `tensors` when it runs: once its node has run (and, without
    // retain_graph, been freed with its saved tensors), nothing here holds it, so activations
    // are released during the backward pass rather than after it.
    while let Some((_, id)) = ready.pop() {
        let Some(t) = tensors.remove(&id) else {
            continue;
        };
        let g = grads.remove(&id);
        let Some(node) = node_of(&t)? else {
            if let (Some(g), true) = (g, t.requires_grad()) {
                accumulate_into_leaf(&t, g)?;
                t.run_grad_hooks()?;
            }
            continue;
        };
        if let Some(g) = g {
            let input_grads = (node.backward)(&g)?;
            for (input, ig) in node.inputs.iter().zip(input_grads) {
                let Some(ig) = ig else { continue };
                if !input.requires_grad() {
                    continue;
                }
                if ig.shape() != input.shape() {
                    return Err(Error::Autograd(format!(
                        "{}: backward produced a gradient of shape {:?} for an input of shape {:?}",
                        node.name,
                        ig.shape(),
                        input.shape()
                    )));
                }
                let ig = if ig.dtype() != input.dtype() {
                    ig.to_dtype(input.dtype())?
                } else {
                    ig
                };
                accumulate(&mut grads, input, ig)?;
            }
            if !retain_graph {
                *t.node() = NodeState::Freed(node.name);
            }
        }
        for i in node.inputs.iter().filter(|i| i.requires_grad()) {
            let left = consumers.get_mut(&i.id()).map(|c| {
                *c -= 1;
                *c
            });
            if left == Some(0) {
                ready.push((i.is_leaf(), i.id()));
            }
        }
    }
    Ok(())
}

impl Tensor {
    /// Backpropagates from this one-element tensor (seed gradient 1) and frees the graph.
    pub fn backward(&self) -> Result<()> {
        if self.elem_count() != 1 {
            return Err(Error::Autograd(format!(
                "grad can be implicitly created only for one-element outputs, this one has shape {:?}",
                self.shape()
            )));
        }
        let seed = Tensor::ones(self.shape().clone(), self.dtype(), self.device())?;
        self.backward_with(&seed, false)
    }

    /// Backpropagates with an explicit upstream gradient of this tensor's shape. With
    /// `retain_graph` the graph survives for another backward pass.
    pub fn backward_with(&self, grad: &Tensor, retain_graph: bool) -> Result<()> {
        if !self.requires_grad() {
            return Err(Error::Autograd(
                "element 0 of tensors does not require grad and does not have a grad_fn".into(),
            ));
        }
        if grad.shape() != self.shape() {
            return Err(Error::Autograd(format!(
                "gradient of shape {:?} for an output of shape {:?}",
                grad.shape(),
                self.shape()
            )));
        }
        let seed = grad
            .detach()
            .to_device(self.device())?
            .to_dtype(self.dtype())?;
        run_backward(self, seed, retain_graph)
    }
}
