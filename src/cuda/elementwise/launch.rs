//! Typed launches of `kernels-cu/elementwise.cu`: unary and binary ops, by the op codes of the
//! one table in `kernels-cu/ops.def` (generated into `UNARY_OPS` / `BINARY_OPS` by build.rs).

use crate::cuda::driver::LaunchConfig;
use crate::cuda::launch::{float_suffix, launch, Strided, MAX_BLOCKS, THREADS};
use crate::cuda::operand::{expect_dtype, expect_len, same_device, Span, View};
use crate::kernel_args;
use hemi_engine::backend::{BinaryOp, UnaryOp};
use hemi_engine::{Error, Result};

fn cfg(n: usize) -> LaunchConfig {
    LaunchConfig::linear(n, THREADS, MAX_BLOCKS)
}

include!(concat!(env!("OUT_DIR"), "/elementwise_ops.rs"));

/// The code of op `name` in one of the generated tables (its index in `kernels-cu/ops.def`).
fn op_code(device: hemi_engine::Device, table: &[&str], name: &str) -> Result<i32> {
    table
        .iter()
        .position(|n| *n == name)
        .map(|i| i as i32)
        .ok_or_else(|| Error::Backend {
            device,
            msg: format!("elementwise op `{name}` is missing from kernels-cu/ops.def"),
        })
}

/// (op code, scalar a, scalar b) of a unary op.
fn unary_code(device: hemi_engine::Device, op: UnaryOp) -> Result<(i32, f32, f32)> {
    let (name, a, b) = match op {
        UnaryOp::Neg => ("neg", 0.0, 0.0),
        UnaryOp::Exp => ("exp", 0.0, 0.0),
        UnaryOp::Log => ("log", 0.0, 0.0),
        UnaryOp::Sqrt => ("sqrt", 0.0, 0.0),
        UnaryOp::Rsqrt => ("rsqrt", 0.0, 0.0),
        UnaryOp::Abs => ("abs", 0.0, 0.0),
        UnaryOp::Square => ("square", 0.0, 0.0),
        UnaryOp::Recip => ("recip", 0.0, 0.0),
        UnaryOp::Relu => ("relu", 0.0, 0.0),
        UnaryOp::Step => ("step", 0.0, 0.0),
        UnaryOp::Sign => ("sign", 0.0, 0.0),
        UnaryOp::Affine { mul, add } => ("affine", mul as f32, add as f32),
        UnaryOp::Powf(e) => ("powf", e as f32, 0.0),
    };
    Ok((op_code(device, UNARY_OPS, name)?, a, b))
}

/// Whether the view is contiguous from a 16-byte-aligned first element (the vectorized
/// kernels' precondition).
fn vectorizable(x: &View<'_>) -> bool {
    x.layout().is_contiguous() && x.start().is_multiple_of(16)
}

/// `y = op(x)` elementwise over the view `x` into contiguous `y` of the same dtype and element
/// count. A contiguous, 16-byte-aligned input with a 16-byte-aligned output takes the
/// vectorized kernel.
pub fn unary(op: UnaryOp, x: &View<'_>, y: &Span<'_>) -> Result<()> {
    const OP: &str = "unary";
    expect_dtype(OP, "the output", y.dtype(), x.dtype())?;
    expect_len(OP, "the output", y.len(), x.elem_count())?;
    same_device(OP, x.device(), [y.device()])?;
    let d = x.driver();
    let suffix = float_suffix(OP, d.device(), x.dtype())?;
    let (code, sa, sb) = unary_code(d.device(), op)?;
    let n = x.elem_count();
    if n == 0 {
        return Ok(());
    }
    let mut count = n as i64;
    if vectorizable(x) && y.ptr().is_multiple_of(16) {
        let (mut code, mut sa, mut sb, mut xp, mut yp) = (code, sa, sb, x.start(), y.ptr());
        let mut a = kernel_args![code, sa, sb, xp, yp, count];
        // SAFETY: unary_vec_T(int, float, float, const T*, T*, long long); `x` is n contiguous
        // elements from a 16-byte-aligned start, `y` n elements, 16-byte aligned.
        return unsafe { launch(d, &format!("unary_vec_{suffix}"), cfg(n), &mut a) };
    }
    let (mut code, mut sa, mut sb, mut xp, mut yp) = (code, sa, sb, x.base(), y.ptr());
    let mut xs = Strided::new(OP, x.layout())?;
    let mut a = kernel_args![code, sa, sb, xp, xs, yp, count];
    // SAFETY: unary_T(int, float, float, const T*, Strided, T*, long long); `x` is a checked
    // view, `y` holds its n elements.
    unsafe { launch(d, &format!("unary_{suffix}"), cfg(n), &mut a) }
}

fn binary_code(device: hemi_engine::Device, op: BinaryOp) -> Result<i32> {
    let name = match op {
        BinaryOp::Add => "add",
        BinaryOp::Sub => "sub",
        BinaryOp::Mul => "mul",
        BinaryOp::Div => "div",
        BinaryOp::Maximum => "maximum",
        BinaryOp::Minimum => "minimum",
        BinaryOp::Eq => "eq",
    };
    op_code(device, BINARY_OPS, name)
}

/// `y = op(x, z)` over two views of one shape (broadcast by stride 0) into contiguous `y`,
/// all of one dtype. `y` may be `x` or `z` itself when that is contiguous: each element is read
/// before it is written.
pub fn binary(op: BinaryOp, x: &View<'_>, z: &View<'_>, y: &Span<'_>) -> Result<()> {
    const OP: &str = "binary";
    if x.layout().shape() != z.layout().shape() {
        return Err(Error::ShapeMismatch {
            op: OP,
            msg: format!(
                "{op:?} of {:?} and {:?}",
                x.layout().shape(),
                z.layout().shape()
            ),
        });
    }
    expect_dtype(OP, "the second input", z.dtype(), x.dtype())?;
    expect_dtype(OP, "the output", y.dtype(), x.dtype())?;
    expect_len(OP, "the output", y.len(), x.elem_count())?;
    same_device(OP, x.device(), [z.device(), y.device()])?;
    let d = x.driver();
    let suffix = float_suffix(OP, d.device(), x.dtype())?;
    let n = x.elem_count();
    if n == 0 {
        return Ok(());
    }
    let code = binary_code(d.device(), op)?;
    if vectorizable(x) && vectorizable(z) && y.ptr().is_multiple_of(16) {
        let (mut code, mut xp, mut zp, mut yp, mut count) =
            (code, x.start(), z.start(), y.ptr(), n as i64);
        let mut a = kernel_args![code, xp, zp, yp, count];
        // SAFETY: binary_vec_T(int, const T*, const T*, T*, long long); both inputs are n
        // contiguous elements (no broadcast) from 16-byte-aligned starts, `y` n elements.
        return unsafe { launch(d, &format!("binary_vec_{suffix}"), cfg(n), &mut a) };
    }
    let (mut code, mut xp, mut zp, mut yp) = (code, x.base(), z.base(), y.ptr());
    let (mut xs, mut zs) = (Strided::new(OP, x.layout())?, Strided::new(OP, z.layout())?);
    let mut count = n as i64;
    let mut a = kernel_args![code, xp, xs, zp, zs, yp, count];
    // SAFETY: binary_T(int, const T*, Strided, const T*, Strided, T*, long long); checked
    // views of n elements each, `y` holds n.
    unsafe { launch(d, &format!("binary_{suffix}"), cfg(n), &mut a) }
}
