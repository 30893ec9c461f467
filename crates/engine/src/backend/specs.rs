//! Op descriptions passed to a [`crate::Backend`]: the enums of elementwise/reduction ops and
//! the geometry of matmul, convolution, pooling, normalization and loss calls.

use crate::{Error, Result};

/// Elementwise ops of one input. Computed in f32 for F16/BF16/F32 (f64 for F64), rounded once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum UnaryOp {
    /// `-x`
    Neg,
    /// `e^x`
    Exp,
    /// natural log
    Log,
    /// square root
    Sqrt,
    /// `1/sqrt(x)`
    Rsqrt,
    /// `|x|`
    Abs,
    /// `x * x`
    Square,
    /// `1 / x`
    Recip,
    /// `max(x, 0)` (NaN propagates)
    Relu,
    /// Heaviside step: `1` where `x > 0`, else `0` (the derivative of relu).
    Step,
    /// `-1`, `0` or `1` by the sign of `x` (NaN stays NaN).
    Sign,
    /// `x * mul + add` with the scalars rounded to the compute type.
    Affine {
        /// Multiplier.
        mul: f64,
        /// Addend.
        add: f64,
    },
    /// `x ^ exponent`.
    Powf(f64),
}

/// Elementwise ops of two inputs of the same shape and dtype (broadcast by strides).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    /// `a + b`
    Add,
    /// `a - b`
    Sub,
    /// `a * b`
    Mul,
    /// `a / b`
    Div,
    /// elementwise maximum (NaN propagates)
    Maximum,
    /// elementwise minimum (NaN propagates)
    Minimum,
    /// `1` where `a == b`, else `0`
    Eq,
}

/// Reductions over a set of dims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    /// sum (accumulated in f32, or f64 for F64)
    Sum,
    /// arithmetic mean
    Mean,
    /// maximum (NaN propagates)
    Max,
    /// minimum (NaN propagates)
    Min,
}

/// A batched matrix product `out[b] = lhs[b] · rhs[b]`, `lhs` viewed as `[batch, m, k]` and
/// `rhs` as `[batch, k, n]` with arbitrary element strides (a batch stride of 0 broadcasts).
/// The output is contiguous `[batch, m, n]` of the inputs' dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatmulSpec {
    /// Number of independent products.
    pub batch: usize,
    /// Rows of lhs and out.
    pub m: usize,
    /// Columns of rhs and out.
    pub n: usize,
    /// The contracted dim.
    pub k: usize,
}

/// Geometry of a 2-D convolution over NCHW input `[n, c_in, h, w]` with OIHW weight
/// `[c_out, c_in / groups, kh, kw]`; output `[n, c_out, out_h, out_w]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Conv2dSpec {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub dilation: (usize, usize),
    pub groups: usize,
}

impl Conv2dSpec {
    /// Checks the geometry: positive sizes, channels divisible by groups, non-empty output.
    pub fn validate(&self, op: &'static str) -> Result<()> {
        let Conv2dSpec {
            stride,
            dilation,
            groups,
            ..
        } = *self;
        if stride.0 == 0 || stride.1 == 0 {
            return Err(Error::invalid(
                op,
                format!("stride {stride:?} must be positive"),
            ));
        }
        if dilation.0 == 0 || dilation.1 == 0 {
            return Err(Error::invalid(
                op,
                format!("dilation {dilation:?} must be positive"),
            ));
        }
        if groups == 0 || self.c_in % groups != 0 || self.c_out % groups != 0 {
            return Err(Error::invalid(
                op,
                format!(
                    "groups {groups} must divide in_channels {} and out_channels {}",
                    self.c_in, self.c_out
                ),
            ));
        }
        if self.kh == 0 || self.kw == 0 || self.c_out == 0 || self.c_in == 0 {
            return Err(Error::invalid(
                op,
                "kernel and channel sizes must be positive",
            ));
        }
        let eff_h = dilation.0 * (self.kh - 1) + 1;
        let eff_w = dilation.1 * (self.kw - 1) + 1;
        if self.h + 2 * self.padding.0 < eff_h || self.w + 2 * self.padding.1 < eff_w {
            return Err(Error::invalid(
                op,
                format!(
                    "input {}x{} with padding {:?} is smaller than the dilated kernel {eff_h}x{eff_w}",
                    self.h, self.w, self.padding
                ),
            ));
        }
        Ok(())
    }
    /// Output height.
    pub fn out_h(&self) -> usize {
        (self.h + 2 * self.padding.0 - self.dilation.0 * (self.kh - 1) - 1) / self.stride.0 + 1
    }
    /// Output width.
    pub fn out_w(&self) -> usize {
        (self.w + 2 * self.padding.1 - self.dilation.1 * (self.kw - 1) - 1) / self.stride.1 + 1
    }
}

/// Geometry of a 2-D max or average pooling over NCHW `[n, c, h, w]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Pool2dSpec {
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
    /// Checks the geometry with PyTorch's rules (padding at most half the kernel).
    pub fn validate(&self, op: &'static str) -> Result<()> {
        let (k, s, p, d) = (self.kernel, self.stride, self.padding, self.dilation);
        if k.0 == 0 || k.1 == 0 || s.0 == 0 || s.1 == 0 || d.0 == 0 || d.1 == 0 {
            return Err(Error::invalid(
                op,
                format!("kernel {k:?}, stride {s:?} and dilation {d:?} must be positive"),
            ));
        }
        if 2 * p.0 > k.0 || 2 * p.1 > k.1 {
            return Err(Error::invalid(
                op,
                format!("padding {p:?} must be at most half the kernel {k:?}"),
            ));
        }
        let eff = (d.0 * (k.0 - 1) + 1, d.1 * (k.1 - 1) + 1);
        if self.h + 2 * p.0 < eff.0 || self.w + 2 * p.1 < eff.1 {
            return Err(Error::invalid(
                op,
                format!(
                    "input {}x{} with padding {p:?} is smaller than the kernel {k:?}",
                    self.h, self.w
                ),
            ));
        }
        Ok(())
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

/// How a loss over a batch is reduced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reduction {
    /// One loss per sample.
    None,
    /// Mean over the (non-ignored) samples; PyTorch's default.
    #[default]
    Mean,
    /// Sum over the samples.
    Sum,
}

/// Options of cross-entropy with integer class targets, as in `torch.nn.functional.cross_entropy`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CrossEntropySpec {
    /// Samples whose target equals this contribute neither loss nor gradient (default -100).
    pub ignore_index: i64,
    /// Mixes the one-hot target with the uniform distribution: `(1-ε)·onehot + ε/C`.
    pub label_smoothing: f64,
    /// Reduction over the batch.
    pub reduction: Reduction,
}

impl Default for CrossEntropySpec {
    fn default() -> Self {
        CrossEntropySpec {
            ignore_index: -100,
            label_smoothing: 0.0,
            reduction: Reduction::Mean,
        }
    }
}
