//! The elementwise family: unary and broadcasting binary ops, concatenation, and the
//! in-place accumulation that gradient accumulation uses.

use super::BackendDevice;
use crate::{Layout, Result, StorageRef};

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

/// Elementwise ops.
pub trait ElementwiseOps: BackendDevice {
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
    /// In place: `dst += src` elementwise over whole buffers of equal length (`src` rounded
    /// through the compute type into `dst`'s dtype once). Gradient accumulation.
    fn accumulate(&self, dst: &StorageRef, src: &StorageRef) -> Result<()>;
}
