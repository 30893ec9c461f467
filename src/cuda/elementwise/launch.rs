//! Typed launches of `kernels-cu/elementwise.cu`: unary and binary ops, by the op codes of the
//! one table in `kernels-cu/ops.def` (generated into `UNARY_OPS` / `BINARY_OPS` by build.rs).

use crate::cuda::driver::{DevicePtr, Driver, LaunchConfig};
use crate::cuda::launch::{float_suffix, launch, Strided, MAX_BLOCKS, THREADS};
use crate::kernel_args;
use hemi_engine::backend::{BinaryOp, UnaryOp};
use hemi_engine::{DType, Error, Layout, Result};

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

/// The address of a contiguous view's first element when it is 16-byte aligned (the
/// vectorized kernels' precondition).
fn aligned_start(dt: DType, x: DevicePtr, l: &Layout) -> Option<DevicePtr> {
    let start = x + (l.offset() * dt.size_in_bytes()) as u64;
    (l.is_contiguous() && start % 16 == 0).then_some(start)
}

/// `y = op(x)` elementwise over the view `xl`, contiguous output of the same dtype. A
/// contiguous, 16-byte-aligned input takes the vectorized kernel.
pub fn unary(
    d: &dyn Driver,
    op: UnaryOp,
    dt: DType,
    x: DevicePtr,
    xl: &Layout,
    y: DevicePtr,
) -> Result<()> {
    let suffix = float_suffix("unary", d.device(), dt)?;
    let (code, sa, sb) = unary_code(d.device(), op)?;
    let n = xl.elem_count();
    let mut count = n as i64;
    if let Some(start) = aligned_start(dt, x, xl) {
        let (mut code, mut sa, mut sb, mut x, mut y) = (code, sa, sb, start, y);
        let mut a = kernel_args![code, sa, sb, x, y, count];
        // SAFETY: unary_vec_T(int, float, float, const T*, T*, long long); `x` is 16-byte
        // aligned with n contiguous elements, `y` a fresh (256-byte aligned) buffer of n.
        return unsafe { launch(d, &format!("unary_vec_{suffix}"), cfg(n), &mut a) };
    }
    let (mut code, mut sa, mut sb, mut x, mut y) = (code, sa, sb, x, y);
    let mut xs = Strided::new("unary", xl)?;
    let mut a = kernel_args![code, sa, sb, x, xs, y, count];
    // SAFETY: unary_T(int, float, float, const T*, Strided, T*, long long).
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

/// `y = op(x, z)` over two views of one shape (broadcast by stride 0), same dtype.
#[allow(clippy::too_many_arguments)]
pub fn binary(
    d: &dyn Driver,
    op: BinaryOp,
    dt: DType,
    x: DevicePtr,
    xl: &Layout,
    z: DevicePtr,
    zl: &Layout,
    y: DevicePtr,
) -> Result<()> {
    if xl.shape() != zl.shape() {
        return Err(Error::ShapeMismatch {
            op: "binary",
            msg: format!("{op:?} of {:?} and {:?}", xl.shape(), zl.shape()),
        });
    }
    let suffix = float_suffix("binary", d.device(), dt)?;
    if let (Some(xs), Some(zs)) = (aligned_start(dt, x, xl), aligned_start(dt, z, zl)) {
        let n = xl.elem_count();
        let (mut code, mut x, mut z, mut y, mut count) =
            (binary_code(d.device(), op)?, xs, zs, y, n as i64);
        let mut a = kernel_args![code, x, z, y, count];
        // SAFETY: binary_vec_T(int, const T*, const T*, T*, long long); both inputs are
        // contiguous (no broadcast), 16-byte aligned, with n elements.
        return unsafe { launch(d, &format!("binary_vec_{suffix}"), cfg(n), &mut a) };
    }
    let name = format!("binary_{suffix}");
    let (mut code, mut x, mut z, mut y) = (binary_code(d.device(), op)?, x, z, y);
    let (mut xs, mut zs) = (Strided::new("binary", xl)?, Strided::new("binary", zl)?);
    let n = xl.elem_count();
    let mut count = n as i64;
    let mut a = kernel_args![code, x, xs, z, zs, y, count];
    // SAFETY: binary_T(int, const T*, Strided, const T*, Strided, T*, long long).
    unsafe { launch(d, &name, cfg(n), &mut a) }
}
