//! Typed launches of `kernels-cu/memory.cu`: fill, strided copies and casts. Each takes
//! checked operands ([`Span`], [`View`]) and checks that they agree with its launch.

use crate::cuda::driver::LaunchConfig;
use crate::cuda::launch::{float_suffix, launch, Strided, MAX_BLOCKS, THREADS};
use crate::cuda::operand::{expect_dtype, expect_len, same_device, Span, View};
use crate::kernel_args;
use hemi_engine::{DType, Result};

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

/// `y[..] = value` where `bits` holds the element's bits.
pub fn fill(y: &Span<'_>, bits: u64) -> Result<()> {
    let (d, n) = (y.driver(), y.len());
    if n == 0 {
        return Ok(());
    }
    let mut p = y.ptr();
    let mut count = n as i64;
    let name = format!("fill_{}", bytes_suffix(y.dtype()));
    match y.dtype().size_in_bytes() {
        2 => {
            let mut v = bits as u16;
            let mut a = kernel_args![p, v, count];
            // SAFETY: fill_b2(unsigned short*, unsigned short, long long); `y` holds n elements.
            unsafe { launch(d, &name, cfg(n), &mut a) }
        }
        4 => {
            let mut v = bits as u32;
            let mut a = kernel_args![p, v, count];
            // SAFETY: fill_b4(unsigned*, unsigned, long long); `y` holds n elements.
            unsafe { launch(d, &name, cfg(n), &mut a) }
        }
        _ => {
            let mut v = bits;
            let mut a = kernel_args![p, v, count];
            // SAFETY: fill_b8(unsigned long long*, unsigned long long, long long); n elements.
            unsafe { launch(d, &name, cfg(n), &mut a) }
        }
    }
}

/// Gathers the view `x` into contiguous `y` of the same dtype and element count.
pub fn copy_strided(x: &View<'_>, y: &Span<'_>) -> Result<()> {
    const OP: &str = "contiguous";
    expect_dtype(OP, "the destination", y.dtype(), x.dtype())?;
    expect_len(OP, "the destination", y.len(), x.elem_count())?;
    same_device(OP, x.device(), [y.device()])?;
    let n = x.elem_count();
    if n == 0 {
        return Ok(());
    }
    let (mut xp, mut yp) = (x.base(), y.ptr());
    let mut xs = Strided::new(OP, x.layout())?;
    let mut count = n as i64;
    let mut a = kernel_args![xp, xs, yp, count];
    let name = format!("copy_strided_{}", bytes_suffix(x.dtype()));
    // SAFETY: copy_strided_bN(const T*, Strided, T*, long long); `x` is a checked view of its
    // buffer and `y` holds its n elements, both of element size N.
    unsafe { launch(x.driver(), &name, cfg(n), &mut a) }
}

/// Converts the view `x` into contiguous `y` (the dtype of `y`), element for element.
pub fn cast(x: &View<'_>, y: &Span<'_>) -> Result<()> {
    const OP: &str = "to_dtype";
    expect_len(OP, "the destination", y.len(), x.elem_count())?;
    same_device(OP, x.device(), [y.device()])?;
    let device = x.device();
    let name = format!(
        "cast_{}_{}",
        float_suffix(OP, device, x.dtype())?,
        float_suffix(OP, device, y.dtype())?
    );
    let n = x.elem_count();
    if n == 0 {
        return Ok(());
    }
    let (mut xp, mut yp) = (x.base(), y.ptr());
    let mut xs = Strided::new(OP, x.layout())?;
    let mut count = n as i64;
    let mut a = kernel_args![xp, xs, yp, count];
    // SAFETY: cast_A_B(const A*, Strided, B*, long long); dtypes name the kernel, `x` is a
    // checked view and `y` holds its n elements.
    unsafe { launch(x.driver(), &name, cfg(n), &mut a) }
}

/// Copies the view `x` onto the view `y` (same shape and dtype).
pub fn copy_view(x: &View<'_>, y: &View<'_>) -> Result<()> {
    const OP: &str = "copy_view";
    expect_dtype(OP, "the destination", y.dtype(), x.dtype())?;
    if x.layout().shape() != y.layout().shape() {
        return Err(hemi_engine::Error::shape(
            OP,
            format!(
                "source {:?} and destination {:?}",
                x.layout().shape(),
                y.layout().shape()
            ),
        ));
    }
    same_device(OP, x.device(), [y.device()])?;
    let n = x.elem_count();
    if n == 0 {
        return Ok(());
    }
    let (mut xp, mut yp) = (x.base(), y.base());
    let (mut xs, mut ys) = (Strided::new(OP, x.layout())?, Strided::new(OP, y.layout())?);
    let mut count = n as i64;
    let mut a = kernel_args![xp, xs, yp, ys, count];
    let name = format!("copy_view_{}", bytes_suffix(x.dtype()));
    // SAFETY: copy_view_bN(const T*, Strided, T*, Strided, long long); both are checked views
    // of n elements of size N.
    unsafe { launch(x.driver(), &name, cfg(n), &mut a) }
}
