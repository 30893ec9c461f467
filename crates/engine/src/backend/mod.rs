//! The [`Backend`] trait: everything a device must implement to run hemi, one method per op
//! family, plus the registry that maps a [`Device`] to its backend.
//!
//! Conventions for every method:
//! - inputs come as a storage plus, where strides matter, a [`Layout`]; methods documented as
//!   "contiguous" expect row-major inputs starting at offset 0 (the tensor layer guarantees it);
//! - outputs are new, contiguous storages;
//! - F16/BF16 compute in f32 and round once at the output; F64 computes in f64;
//! - every error names the op and the shapes.

mod amp;
mod specs;

pub use amp::*;
pub use specs::*;

use crate::cpu::CpuBackend;
use crate::{CpuStorage, DType, Device, Error, Layout, Result, StorageRef};
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, OnceLock, RwLock};

/// Result storages of a training-mode batch norm: output plus per-channel batch statistics.
#[derive(Debug)]
pub struct BatchNormForward {
    /// Normalized, scaled and shifted output, dtype of the input.
    pub y: StorageRef,
    /// Per-channel batch mean `[C]`, in the statistics dtype.
    pub mean: StorageRef,
    /// Per-channel biased batch variance `[C]`, in the statistics dtype.
    pub var: StorageRef,
    /// Per-channel `1/sqrt(var + eps)` `[C]`, in the statistics dtype.
    pub invstd: StorageRef,
}

/// Gradients of a batch norm.
#[derive(Debug)]
pub struct BatchNormBackward {
    /// Gradient of the input, dtype of the input.
    pub dx: StorageRef,
    /// Gradient of the scale `[C]`, dtype of the weight.
    pub dweight: StorageRef,
    /// Gradient of the shift `[C]`, dtype of the weight.
    pub dbias: StorageRef,
}

/// A compute device's implementation of every op. Object safe; see the module docs for the
/// conventions shared by all methods.
pub trait Backend: Send + Sync + Debug {
    /// The device this backend runs on.
    fn device(&self) -> Device;

    /// Copies host data to a new device buffer.
    fn upload(&self, data: &CpuStorage) -> Result<StorageRef>;
    /// Copies the elements of `layout` (in logical order) back to the host.
    fn to_host(&self, s: &StorageRef, layout: &Layout) -> Result<CpuStorage>;
    /// A buffer of `n` elements, all `value` rounded to `dtype`.
    fn full(&self, dtype: DType, n: usize, value: f64) -> Result<StorageRef>;
    /// Materializes a strided view as a contiguous buffer of the same dtype.
    fn copy_strided(&self, s: &StorageRef, layout: &Layout) -> Result<StorageRef>;
    /// Converts a strided view to `dtype` (round to nearest even; contiguous output).
    fn cast(&self, s: &StorageRef, layout: &Layout, dtype: DType) -> Result<StorageRef>;

    /// Concatenates views of one dtype along `dim`; all agree on the other dims.
    fn cat(&self, inputs: &[(StorageRef, Layout)], dim: usize) -> Result<StorageRef>;

    /// Elementwise op on a strided view.
    fn unary(&self, op: UnaryOp, s: &StorageRef, layout: &Layout) -> Result<StorageRef>;
    /// Elementwise op on two views of equal shape and dtype (broadcast by stride 0).
    fn binary(
        &self,
        op: BinaryOp,
        lhs: &StorageRef,
        lhs_layout: &Layout,
        rhs: &StorageRef,
        rhs_layout: &Layout,
    ) -> Result<StorageRef>;
    /// Reduces the listed dims (sorted, unique), keeping them as size 1.
    fn reduce(
        &self,
        op: ReduceOp,
        s: &StorageRef,
        layout: &Layout,
        dims: &[usize],
    ) -> Result<StorageRef>;

    /// Batched matrix product, see [`MatmulSpec`] (layouts are rank 3).
    fn matmul(
        &self,
        lhs: &StorageRef,
        lhs_layout: &Layout,
        rhs: &StorageRef,
        rhs_layout: &Layout,
        spec: &MatmulSpec,
    ) -> Result<StorageRef>;

    /// Convolution forward; contiguous `x` and `w` of one dtype.
    fn conv2d(&self, x: &StorageRef, w: &StorageRef, spec: &Conv2dSpec) -> Result<StorageRef>;
    /// Gradient of the convolution's input from the output gradient `dy` (contiguous).
    fn conv2d_backward_input(
        &self,
        dy: &StorageRef,
        w: &StorageRef,
        spec: &Conv2dSpec,
    ) -> Result<StorageRef>;
    /// Gradient of the convolution's weight from the output gradient `dy` (contiguous).
    fn conv2d_backward_weight(
        &self,
        x: &StorageRef,
        dy: &StorageRef,
        spec: &Conv2dSpec,
    ) -> Result<StorageRef>;

    /// Training-mode batch norm over contiguous `x` of shape `[N, C, S]` (S = spatial size):
    /// normalizes with the batch statistics. `weight`/`bias` `[C]` may have a wider dtype than
    /// `x`; statistics come back in the weight's dtype.
    fn batch_norm_train(
        &self,
        x: &StorageRef,
        weight: &StorageRef,
        bias: &StorageRef,
        dims: (usize, usize, usize),
        eps: f64,
    ) -> Result<BatchNormForward>;
    /// Gradients of [`Backend::batch_norm_train`] given the saved mean and invstd.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_backward(
        &self,
        dy: &StorageRef,
        x: &StorageRef,
        weight: &StorageRef,
        mean: &StorageRef,
        invstd: &StorageRef,
        dims: (usize, usize, usize),
    ) -> Result<BatchNormBackward>;

    /// Max pooling of contiguous `x`; returns the output and the I64 argmax of each output
    /// (flat index `h * W + w` within its plane).
    fn max_pool2d(&self, x: &StorageRef, spec: &Pool2dSpec) -> Result<(StorageRef, StorageRef)>;
    /// Scatters `dy` to the argmax positions (accumulating), giving `dx` of `x`'s shape.
    fn max_pool2d_backward(
        &self,
        dy: &StorageRef,
        indices: &StorageRef,
        spec: &Pool2dSpec,
    ) -> Result<StorageRef>;
    /// Average pooling of contiguous `x`.
    fn avg_pool2d(&self, x: &StorageRef, spec: &Pool2dSpec) -> Result<StorageRef>;
    /// Gradient of [`Backend::avg_pool2d`].
    fn avg_pool2d_backward(&self, dy: &StorageRef, spec: &Pool2dSpec) -> Result<StorageRef>;
    /// Adaptive average pooling of contiguous `[n, c, h, w]` to `[n, c, oh, ow]` (PyTorch's
    /// windows: `floor(i*H/oh) .. ceil((i+1)*H/oh)`).
    fn adaptive_avg_pool2d(
        &self,
        x: &StorageRef,
        dims: [usize; 4],
        out: (usize, usize),
    ) -> Result<StorageRef>;
    /// Gradient of [`Backend::adaptive_avg_pool2d`].
    fn adaptive_avg_pool2d_backward(
        &self,
        dy: &StorageRef,
        dims: [usize; 4],
        out: (usize, usize),
    ) -> Result<StorageRef>;

    /// Softmax (or log-softmax) of contiguous `x` viewed as `[outer, size, inner]` along the
    /// middle dim.
    fn softmax(&self, x: &StorageRef, dims: (usize, usize, usize), log: bool)
        -> Result<StorageRef>;
    /// Gradient of softmax/log-softmax from its output `y` and the output gradient `dy`.
    fn softmax_backward(
        &self,
        y: &StorageRef,
        dy: &StorageRef,
        dims: (usize, usize, usize),
        log: bool,
    ) -> Result<StorageRef>;

    /// Cross-entropy of contiguous logits `[n, c]` against I64 targets `[n]`. Returns `[n]`
    /// for [`Reduction::None`], else one element. Out-of-range targets are an error.
    fn cross_entropy(
        &self,
        logits: &StorageRef,
        targets: &StorageRef,
        n_c: (usize, usize),
        spec: &CrossEntropySpec,
    ) -> Result<StorageRef>;
    /// Gradient of [`Backend::cross_entropy`] w.r.t. the logits; `dloss` has the loss's shape.
    fn cross_entropy_backward(
        &self,
        logits: &StorageRef,
        targets: &StorageRef,
        dloss: &StorageRef,
        n_c: (usize, usize),
        spec: &CrossEntropySpec,
    ) -> Result<StorageRef>;

    /// AMP: multiplies every gradient by `inv_scale` (F32 `[1]`) and returns the results with
    /// `found_inf` (F32 `[1]`) set to 1 when any gradient value is inf or NaN, else kept — one
    /// call for the whole list, reading the scale on the device (no host sync).
    fn non_finite_check_and_unscale(
        &self,
        grads: &[StorageRef],
        found_inf: &StorageRef,
        inv_scale: &StorageRef,
    ) -> Result<(Vec<StorageRef>, StorageRef)>;

    /// AMP: the dynamic loss-scale update of [`ScaleUpdateSpec`], on the device.
    fn update_scale(
        &self,
        state: &ScaleState,
        found_inf: &StorageRef,
        spec: &ScaleUpdateSpec,
    ) -> Result<ScaleState>;

    /// Fused Adam/AdamW over many parameters. Increments each step count, divides each
    /// gradient by `grad_scale` when given, and updates; when `found_inf` is nonzero nothing
    /// changes (the step count is restored) — all decided on the device. Returns the new
    /// tensors (the gradient unscaled) in the same order.
    fn fused_adam(
        &self,
        tensors: &[AdamTensors],
        spec: &FusedAdamSpec,
        grad_scale: Option<&StorageRef>,
        found_inf: Option<&StorageRef>,
    ) -> Result<Vec<AdamTensors>>;
}

type Registry = RwLock<HashMap<Device, Arc<dyn Backend>>>;

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let mut m: HashMap<Device, Arc<dyn Backend>> = HashMap::new();
        m.insert(Device::Cpu, Arc::new(CpuBackend::new()));
        RwLock::new(m)
    })
}

/// Installs (or replaces) the backend of a device. The CPU backend is always present.
pub fn register_backend(backend: Arc<dyn Backend>) {
    let mut reg = registry().write().unwrap_or_else(|e| e.into_inner());
    reg.insert(backend.device(), backend);
}

/// The backend of `device`, or an error when none is registered.
pub fn backend_for(device: Device) -> Result<Arc<dyn Backend>> {
    let reg = registry().read().unwrap_or_else(|e| e.into_inner());
    reg.get(&device).cloned().ok_or_else(|| Error::Unsupported {
        op: "backend_for",
        device,
        msg: "no backend registered for this device (build hemi with feature `cuda`)".into(),
    })
}

/// Checks that `s` holds at least the elements `layout` addresses.
pub fn check_bounds(op: &'static str, s: &StorageRef, layout: &Layout) -> Result<()> {
    let n = layout.elem_count();
    if n == 0 {
        return Ok(());
    }
    let last = layout.offset()
        + layout
            .dims()
            .iter()
            .zip(layout.strides())
            .map(|(d, s)| (d - 1) * s)
            .sum::<usize>();
    if last >= s.len() {
        return Err(Error::shape(
            op,
            format!(
                "layout {:?} (offset {}) addresses element {last} of a {}-element buffer",
                layout.shape(),
                layout.offset(),
                s.len()
            ),
        ));
    }
    Ok(())
}
