//! The elementwise family: unary and broadcasting binary ops, concatenation, and the
//! in-place accumulation that gradient accumulation uses.

use super::{check_bounds, BackendDevice};
use crate::{Error, Layout, Result, StorageRef};

/// Checks the inputs of [`ElementwiseOps::cat`]: at least one, one dtype, one rank with
/// `dim` inside it, equal dims outside `dim`, every layout inside its buffer.
pub fn check_cat(inputs: &[(StorageRef, Layout)], dim: usize) -> Result<()> {
    let Some((first, fl)) = inputs.first() else {
        return Err(Error::invalid("cat", "needs at least one tensor"));
    };
    if dim >= fl.dims().len() {
        return Err(Error::invalid(
            "cat",
            format!("dim {dim} out of range for rank {}", fl.dims().len()),
        ));
    }
    for (s, l) in inputs {
        check_bounds("cat", s, l)?;
        if s.dtype() != first.dtype() {
            return Err(Error::dtype(
                "cat",
                format!("{} and {}", first.dtype(), s.dtype()),
            ));
        }
        let same = l.dims().len() == fl.dims().len()
            && l.dims()
                .iter()
                .zip(fl.dims())
                .enumerate()
                .all(|(i, (a, b))| i == dim || a == b);
        if !same {
            return Err(Error::shape(
                "cat",
                format!(
                    "{:?} and {:?} differ outside dim {dim}",
                    fl.dims(),
                    l.dims()
                ),
            ));
        }
    }
    Ok(())
}

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
