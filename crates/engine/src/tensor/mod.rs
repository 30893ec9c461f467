//! [`Tensor`]: a shared handle to a strided view of a device buffer, with autograd metadata.

mod construct;
mod display;
mod inplace;
mod random;
mod views;

pub use random::{manual_seed, rng_state, set_rng_state, Generator, RngState};

use crate::autograd::NodeState;
use crate::backend::Backend;
use crate::backend_for;
use crate::{CpuStorage, DType, Device, Element, Error, Layout, Result, Shape, StorageRef};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

/// A unique id per tensor handle created by an op (views get their own id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(usize);

impl TensorId {
    fn next() -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(1);
        TensorId(COUNTER.fetch_add(1, Ordering::Relaxed))
    }
}

pub(crate) struct TensorImpl {
    id: TensorId,
    storage: RwLock<StorageRef>,
    layout: Layout,
    dtype: DType,
    device: Device,
    requires_grad: AtomicBool,
    /// Shared with the tensor's graph handles ([`Tensor::graph_handle`]).
    pub(crate) node: Arc<Mutex<NodeState>>,
    grad: Mutex<Option<Tensor>>,
    /// Hooks run after a backward pass accumulated into this leaf's `.grad`.
    pub(crate) grad_hooks: Mutex<Vec<(u64, crate::autograd::GradHook)>>,
}

/// An n-dimensional array on a [`Device`], with optional gradient tracking.
///
/// Cloning is cheap (a reference count); clones share data, gradient and graph node.
/// Every op returns `Result`: shape, dtype and device mismatches are errors naming the op.
///
/// ```
/// use hemi_engine::{Tensor, DType, Device};
/// let a = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2], Device::Cpu)?;
/// let b = a.matmul(&a.t()?)?;
/// assert_eq!(b.to_vec::<f32>()?, vec![5.0, 11.0, 11.0, 25.0]);
/// # Ok::<(), hemi_engine::Error>(())
/// ```
#[derive(Clone)]
pub struct Tensor(pub(crate) Arc<TensorImpl>);

impl Tensor {
    /// Wraps a storage and layout as a new tensor with no graph node.
    pub(crate) fn from_storage(storage: StorageRef, layout: Layout) -> Tensor {
        let (dtype, device) = (storage.dtype(), storage.device());
        Tensor(Arc::new(TensorImpl {
            id: TensorId::next(),
            storage: RwLock::new(storage),
            layout,
            dtype,
            device,
            requires_grad: AtomicBool::new(false),
            node: Arc::new(Mutex::new(NodeState::Leaf)),
            grad: Mutex::new(None),
            grad_hooks: Mutex::new(Vec::new()),
        }))
    }

    /// A contiguous tensor of `shape` over `storage`.
    pub(crate) fn contiguous_from(storage: StorageRef, shape: impl Into<Shape>) -> Tensor {
        Tensor::from_storage(storage, Layout::contiguous(shape))
    }

    /// A contiguous tensor over a storage a backend returned (for code that calls [`Backend`]
    /// methods directly); the storage must hold exactly `shape`'s element count.
    pub fn from_storage_ref(storage: StorageRef, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if storage.len() != shape.elem_count() {
            return Err(Error::shape(
                "from_storage_ref",
                format!("{} elements for shape {shape:?}", storage.len()),
            ));
        }
        Ok(Tensor::contiguous_from(storage, shape))
    }

    /// This tensor's id.
    pub fn id(&self) -> TensorId {
        self.0.id
    }
    /// The logical shape.
    pub fn shape(&self) -> &Shape {
        self.0.layout.shape()
    }
    /// The dims of the shape.
    pub fn dims(&self) -> &[usize] {
        self.0.layout.dims()
    }
    /// Number of dims.
    pub fn rank(&self) -> usize {
        self.shape().rank()
    }
    /// Number of elements.
    pub fn elem_count(&self) -> usize {
        self.0.layout.elem_count()
    }
    /// The strided layout over the storage.
    pub fn layout(&self) -> &Layout {
        &self.0.layout
    }
    /// The element type.
    pub fn dtype(&self) -> DType {
        self.0.dtype
    }
    /// Where the data lives.
    pub fn device(&self) -> Device {
        self.0.device
    }
    /// The storage handle (shared with views of this tensor).
    pub fn storage(&self) -> StorageRef {
        self.0
            .storage
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    /// The backend of this tensor's device.
    pub fn backend(&self) -> Result<Arc<dyn Backend>> {
        backend_for(self.device())
    }

    /// Whether gradients are recorded for this tensor.
    pub fn requires_grad(&self) -> bool {
        self.0.requires_grad.load(Ordering::Relaxed)
    }
    pub(crate) fn set_requires_grad_flag(&self, on: bool) {
        self.0.requires_grad.store(on, Ordering::Relaxed)
    }
    /// Turns gradient tracking on or off for a leaf float tensor; returns the same tensor.
    pub fn requires_grad_(&self, on: bool) -> Result<Tensor> {
        if !self.is_leaf() {
            return Err(Error::Autograd(
                "requires_grad_ can only be changed on leaf tensors (use detach())".into(),
            ));
        }
        if on && !self.dtype().is_float() {
            return Err(Error::Autograd(format!(
                "only float tensors can require gradients, this one is {}",
                self.dtype()
            )));
        }
        self.set_requires_grad_flag(on);
        Ok(self.clone())
    }
    /// True when the tensor was not produced by a recorded op.
    pub fn is_leaf(&self) -> bool {
        matches!(*self.node(), NodeState::Leaf)
    }
    /// True when a backward pass has freed the graph node that produced this tensor.
    pub fn graph_freed(&self) -> bool {
        matches!(*self.node(), NodeState::Freed(_))
    }
    /// What a graph node keeps of this tensor as one of its inputs: a leaf that requires grad
    /// itself (its gradient accumulates there); any other tensor a handle with the same id,
    /// shape, dtype, device, grad flag and graph node but no data, so that an intermediate
    /// result that no backward function saved is freed as soon as the user drops it — as in
    /// PyTorch, whose graph links nodes, not tensors.
    pub(crate) fn graph_handle(&self) -> Tensor {
        if self.requires_grad() && self.is_leaf() {
            return self.clone();
        }
        static EMPTY: std::sync::OnceLock<StorageRef> = std::sync::OnceLock::new();
        let empty = EMPTY
            .get_or_init(|| crate::cpu::wrap(CpuStorage::F32(Vec::new())))
            .clone();
        Tensor(Arc::new(TensorImpl {
            id: self.0.id,
            storage: RwLock::new(empty),
            layout: self.0.layout.clone(),
            dtype: self.0.dtype,
            device: self.0.device,
            requires_grad: AtomicBool::new(self.requires_grad()),
            node: Arc::clone(&self.0.node),
            grad: Mutex::new(None),
            grad_hooks: Mutex::new(Vec::new()),
        }))
    }
    pub(crate) fn node(&self) -> MutexGuard<'_, NodeState> {
        self.0.node.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// The accumulated gradient of a leaf, if any backward pass reached it.
    pub fn grad(&self) -> Option<Tensor> {
        self.0
            .grad
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    /// Replaces the stored gradient (optimizers and gradient scalers use this).
    pub fn set_grad(&self, g: Option<Tensor>) -> Result<()> {
        if let Some(g) = &g {
            if g.shape() != self.shape() {
                return Err(Error::shape(
                    "set_grad",
                    format!("gradient {:?} for tensor {:?}", g.shape(), self.shape()),
                ));
            }
        }
        *self.0.grad.lock().unwrap_or_else(|e| e.into_inner()) = g;
        Ok(())
    }
    /// Drops the gradient (PyTorch's `zero_grad(set_to_none=True)`).
    pub fn zero_grad(&self) {
        *self.0.grad.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
    /// A new leaf sharing this tensor's data, outside any graph.
    pub fn detach(&self) -> Tensor {
        Tensor::from_storage(self.storage(), self.layout().clone())
    }

    /// Copies the data to the host in logical order.
    pub fn to_host(&self) -> Result<CpuStorage> {
        self.backend()?.to_host(&self.storage(), self.layout())
    }
    /// The elements in logical (row-major) order; `T` must match the dtype.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        if T::DTYPE != self.dtype() {
            return Err(Error::ReadBack {
                requested: T::DTYPE,
                actual: self.dtype(),
            });
        }
        T::from_storage(self.to_host()?).ok_or(Error::ReadBack {
            requested: T::DTYPE,
            actual: self.dtype(),
        })
    }
    /// The single element of a one-element tensor; `T` must match the dtype.
    pub fn to_scalar<T: Element>(&self) -> Result<T> {
        if self.elem_count() != 1 {
            return Err(Error::shape(
                "to_scalar",
                format!(
                    "tensor of shape {:?} has {} elements, not 1",
                    self.shape(),
                    self.elem_count()
                ),
            ));
        }
        Ok(self.to_vec::<T>()?[0])
    }
    /// The single element of a one-element tensor of any dtype, as f64.
    pub fn item(&self) -> Result<f64> {
        if self.elem_count() != 1 {
            return Err(Error::shape(
                "item",
                format!(
                    "tensor of shape {:?} has {} elements, not 1",
                    self.shape(),
                    self.elem_count()
                ),
            ));
        }
        let h = self.to_host()?;
        Ok(crate::cpu::compute::to_f64_vec(&h, &Layout::contiguous([1]))?[0])
    }
    /// All elements converted to f64, in logical order (any dtype).
    pub fn to_f64_vec(&self) -> Result<Vec<f64>> {
        let h = self.to_host()?;
        crate::cpu::compute::to_f64_vec(&h, &Layout::contiguous([h.len()]))
    }

    /// Copies the tensor to another device (a no-op handle clone on the same device).
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if device == self.device() {
            return Ok(self.clone());
        }
        let host = self.to_host()?;
        let s = backend_for(device)?.upload(&host)?;
        let out = Tensor::contiguous_from(s, self.shape().clone());
        let src_device = self.device();
        Ok(crate::autograd::track(
            out,
            "to_device",
            &[self],
            move |g| Ok(vec![Some(g.to_device(src_device)?)]),
        ))
    }
}

impl std::fmt::Debug for TensorImpl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TensorImpl({:?})", self.id)
    }
}
