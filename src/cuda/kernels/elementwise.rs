//! Wrappers of `kernels-cu/elementwise.cu`: fill, strided copy, casts, unary and binary ops.

use super::{float_suffix, launch, Strided, MAX_BLOCKS, THREADS};
use crate::cuda::driver::{DevicePtr, Driver, LaunchConfig};
use crate::kernel_args;
use hemi_engine::backend::{BinaryOp, UnaryOp};
use hemi_engine::{DType, Error, Layout, Result};

fn cfg(n: usize) -> LaunchConfig {
    LaunchConfig::linear(n, THREADS, MAX_BLOCKS)
}

/// Element size suffix of the byte-moving kernels.
fn bytes_suffix(dt: DType) -> &'static str {
    match dt.size_in_bytes() {
        2 => "b2",
        4 => "b4",
        _ => "b8",
    }
}

/// `y[0..n] = value` where `value` holds the element's bits.
pub fn fill(d: &dyn Driver, dt: DType, y: DevicePtr, n: usize, bits: u64) -> Result<()> {
    let mut y = y;
    let mut count = n as i64;
    let name = format!("fill_{}", bytes_suffix(dt));
    match dt.size_in_bytes() {
        2 => {
            let mut v = bits as u16;
            let mut a = kernel_args![y, v, count];
            // SAFETY: fill_b2(unsigned short*, unsigned short, long long); `y` holds n elements.
            unsafe { launch(d, &name, cfg(n), &mut a) }
        }
        4 => {
            let mut v = bits as u32;
            let mut a = kernel_args![y, v, count];
            // SAFETY: fill_b4(unsigned*, unsigned, long long); `y` holds n elements.
            unsafe { launch(d, &name, cfg(n), &mut a) }
        }
        _ => {
            let mut v = bits;
            let mut a = kernel_args![y, v, count];
            // SAFETY: fill_b8(unsigned long long*, unsigned long long, long long).
            unsafe { launch(d, &name, cfg(n), &mut a) }
        }
    }
}

/// Gathers the view `xl` of `x` into contiguous `y` (any dtype).
pub fn copy_strided(
    d: &dyn Driver,
    dt: DType,
    x: DevicePtr,
    xl: &Layout,
    y: DevicePtr,
) -> Result<()> {
    let (mut x, mut y) = (x, y);
    let mut xs = Strided::new("contiguous", xl)?;
    let n = xl.elem_count();
    let mut count = n as i64;
    let mut a = kernel_args![x, xs, y, count];
    let name = format!("copy_strided_{}", bytes_suffix(dt));
    // SAFETY: copy_strided_bN(const T*, Strided, T*, long long); the caller bounds-checked `xl`
    // against `x` and sized `y` for n elements.
    unsafe { launch(d, &name, cfg(n), &mut a) }
}

/// Converts the view `xl` of `x` (dtype `from`) to contiguous `y` (dtype `to`).
pub fn cast(
    d: &dyn Driver,
    from: DType,
    x: DevicePtr,
    xl: &Layout,
    to: DType,
    y: DevicePtr,
) -> Result<()> {
    let device = d.device();
    let name = format!(
        "cast_{}_{}",
        float_suffix("to_dtype", device, from)?,
        float_suffix("to_dtype", device, to)?
    );
    let (mut x, mut y) = (x, y);
    let mut xs = Strided::new("to_dtype", xl)?;
    let n = xl.elem_count();
    let mut count = n as i64;
    let mut a = kernel_args![x, xs, y, count];
    // SAFETY: cast_A_B(const A*, Strided, B*, long long); bounds checked by the caller.
    unsafe { launch(d, &name, cfg(n), &mut a) }
}

/// (op code, scalar a, scalar b) of a unary op, as `elementwise.cu` numbers them.
fn unary_code(op: UnaryOp) -> (i32, f32, f32) {
    match op {
        UnaryOp::Neg => (0, 0.0, 0.0),
        UnaryOp::Exp => (1, 0.0, 0.0),
        UnaryOp::Log => (2, 0.0, 0.0),
        UnaryOp::Sqrt => (3, 0.0, 0.0),
        UnaryOp::Rsqrt => (4, 0.0, 0.0),
        UnaryOp::Abs => (5, 0.0, 0.0),
        UnaryOp::Square => (6, 0.0, 0.0),
        UnaryOp::Recip => (7, 0.0, 0.0),
        UnaryOp::Relu => (8, 0.0, 0.0),
        UnaryOp::Step => (9, 0.0, 0.0),
        UnaryOp::Sign => (10, 0.0, 0.0),
        UnaryOp::Affine { mul, add } => (11, mul as f32, add as f32),
        UnaryOp::Powf(e) => (12, e as f32, 0.0),
    }
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
    let (code, sa, sb) = unary_code(op);
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

fn binary_code(op: BinaryOp) -> i32 {
    match op {
        BinaryOp::Add => 0,
        BinaryOp::Sub => 1,
        BinaryOp::Mul => 2,
        BinaryOp::Div => 3,
        BinaryOp::Maximum => 4,
        BinaryOp::Minimum => 5,
        BinaryOp::Eq => 6,
    }
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
        let (mut code, mut x, mut z, mut y, mut count) = (binary_code(op), xs, zs, y, n as i64);
        let mut a = kernel_args![code, x, z, y, count];
        // SAFETY: binary_vec_T(int, const T*, const T*, T*, long long); both inputs are
        // contiguous (no broadcast), 16-byte aligned, with n elements.
        return unsafe { launch(d, &format!("binary_vec_{suffix}"), cfg(n), &mut a) };
    }
    let name = format!("binary_{suffix}");
    let (mut code, mut x, mut z, mut y) = (binary_code(op), x, z, y);
    let (mut xs, mut zs) = (Strided::new("binary", xl)?, Strided::new("binary", zl)?);
    let n = xl.elem_count();
    let mut count = n as i64;
    let mut a = kernel_args![code, x, xs, z, zs, y, count];
    // SAFETY: binary_T(int, const T*, Strided, const T*, Strided, T*, long long).
    unsafe { launch(d, &name, cfg(n), &mut a) }
}

/// Copies the view `xl` of `x` onto the view `yl` of `y` (same shape, any dtype).
pub fn copy_view(
    d: &dyn Driver,
    dt: DType,
    x: DevicePtr,
    xl: &Layout,
    y: DevicePtr,
    yl: &Layout,
) -> Result<()> {
    let (mut x, mut y) = (x, y);
    let (mut xs, mut ys) = (Strided::new("cat", xl)?, Strided::new("cat", yl)?);
    let n = xl.elem_count();
    let mut count = n as i64;
    let mut a = kernel_args![x, xs, y, ys, count];
    let name = format!("copy_view_{}", bytes_suffix(dt));
    // SAFETY: copy_view_bN(const T*, Strided, T*, Strided, long long); both views were
    // bounds-checked by the caller and have n elements.
    unsafe { launch(d, &name, cfg(n), &mut a) }
}
