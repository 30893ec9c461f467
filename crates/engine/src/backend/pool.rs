//! The pooling family (a device may lack it: the default bodies say `Unsupported`).

use super::{unsupported, BackendDevice};
use crate::{Error, MemoryFormat, Result, Shape, StorageRef};

/// Geometry of a 2-D max or average pooling over `[n, c, h, w]`; input, output and
/// gradients are dense in `format` (NCHW or channels-last NHWC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Pool2dSpec {
    /// Memory format of every storage of the call.
    pub format: MemoryFormat,
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    /// Max pooling only; average pooling requires `(1, 1)`.
    pub dilation: (usize, usize),
    /// Average pooling: count padded positions in the divisor (PyTorch's default `true`).
    pub count_include_pad: bool,
}

impl Pool2dSpec {
    /// Checks the geometry with PyTorch's rules (channels and planes not empty, padding at
    /// most half the kernel).
    pub fn validate(&self, op: &'static str) -> Result<()> {
        let (k, s, p, d) = (self.kernel, self.stride, self.padding, self.dilation);
        if self.c == 0 || self.h == 0 || self.w == 0 {
            // PyTorch's rule: only the batch may be empty (a window over an empty plane would
            // have no element to take the max or the mean of).
            return Err(Error::shape(
                op,
                format!(
                    "expected a 4-D input with an optional 0 batch size, got {:?}",
                    self.input_dims()
                ),
            ));
        }
        if k.0 == 0 || k.1 == 0 || s.0 == 0 || s.1 == 0 || d.0 == 0 || d.1 == 0 {
            return Err(Error::invalid(
                op,
                format!("kernel {k:?}, stride {s:?} and dilation {d:?} must be positive"),
            ));
        }
        if p.0 > k.0 / 2 || p.1 > k.1 / 2 {
            return Err(Error::invalid(
                op,
                format!("padding {p:?} must be at most half the kernel {k:?}"),
            ));
        }
        // The dilated window and the padded input, without wrapping.
        let span = |d: usize, k: usize| d.checked_mul(k - 1).and_then(|x| x.checked_add(1));
        let padded = |n: usize, p: usize| p.checked_mul(2).and_then(|x| x.checked_add(n));
        let (Some(e0), Some(e1), Some(h), Some(w)) = (
            span(d.0, k.0),
            span(d.1, k.1),
            padded(self.h, p.0),
            padded(self.w, p.1),
        ) else {
            return Err(Error::invalid(
                op,
                format!("kernel {k:?}, dilation {d:?} and padding {p:?} overflow"),
            ));
        };
        if h < e0 || w < e1 {
            return Err(Error::invalid(
                op,
                format!(
                    "input {}x{} with padding {p:?} is smaller than the kernel {k:?}",
                    self.h, self.w
                ),
            ));
        }
        Shape::new(self.output_dims()).checked_elem_count(op)?;
        Ok(())
    }
    /// Input dims `[n, c, h, w]`.
    pub fn input_dims(&self) -> [usize; 4] {
        [self.n, self.c, self.h, self.w]
    }
    /// Output dims `[n, c, out_h, out_w]`.
    pub fn output_dims(&self) -> [usize; 4] {
        [self.n, self.c, self.out_h(), self.out_w()]
    }
    /// Output height (floor mode).
    pub fn out_h(&self) -> usize {
        (self.h + 2 * self.padding.0 - self.dilation.0 * (self.kernel.0 - 1) - 1) / self.stride.0
            + 1
    }
    /// Output width (floor mode).
    pub fn out_w(&self) -> usize {
        (self.w + 2 * self.padding.1 - self.dilation.1 * (self.kernel.1 - 1) - 1) / self.stride.1
            + 1
    }
}

/// Max, average and adaptive average pooling.
pub trait PoolOps: BackendDevice {
    /// Max pooling of `x`; returns the output and the argmax of each output (I64, in an order
    /// private to the backend: only its `max_pool2d_backward` reads it).
    fn max_pool2d(&self, x: &StorageRef, spec: &Pool2dSpec) -> Result<(StorageRef, StorageRef)> {
        let _ = (x, spec);
        Err(unsupported(self.device(), "max_pool2d"))
    }
    /// Scatters `dy` to the argmax positions (accumulating), giving `dx` of `x`'s shape.
    fn max_pool2d_backward(
        &self,
        dy: &StorageRef,
        indices: &StorageRef,
        spec: &Pool2dSpec,
    ) -> Result<StorageRef> {
        let _ = (dy, indices, spec);
        Err(unsupported(self.device(), "max_pool2d_backward"))
    }
    /// Average pooling of `x`.
    fn avg_pool2d(&self, x: &StorageRef, spec: &Pool2dSpec) -> Result<StorageRef> {
        let _ = (x, spec);
        Err(unsupported(self.device(), "avg_pool2d"))
    }
    /// Gradient of [`PoolOps::avg_pool2d`].
    fn avg_pool2d_backward(&self, dy: &StorageRef, spec: &Pool2dSpec) -> Result<StorageRef> {
        let _ = (dy, spec);
        Err(unsupported(self.device(), "avg_pool2d_backward"))
    }
    /// Adaptive average pooling of `[n, c, h, w]` to `[n, c, oh, ow]` (PyTorch's windows:
    /// `floor(i*H/oh) .. ceil((i+1)*H/oh)`), input and output dense in `format`.
    fn adaptive_avg_pool2d(
        &self,
        x: &StorageRef,
        dims: [usize; 4],
        out: (usize, usize),
        format: MemoryFormat,
    ) -> Result<StorageRef> {
        let _ = (x, dims, out, format);
        Err(unsupported(self.device(), "adaptive_avg_pool2d"))
    }
    /// Gradient of [`PoolOps::adaptive_avg_pool2d`].
    fn adaptive_avg_pool2d_backward(
        &self,
        dy: &StorageRef,
        dims: [usize; 4],
        out: (usize, usize),
        format: MemoryFormat,
    ) -> Result<StorageRef> {
        let _ = (dy, dims, out, format);
        Err(unsupported(self.device(), "adaptive_avg_pool2d_backward"))
    }
}
