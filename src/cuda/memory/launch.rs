//! Typed launches of `kernels-cu/memory.cu`: fill, strided copies and casts. Callers pass
//! buffers they checked (lengths and layouts inside the allocation).

use crate::cuda::driver::{DevicePtr, Driver, LaunchConfig};
use crate::cuda::launch::{float_suffix, launch, Strided, MAX_BLOCKS, THREADS};
use crate::kernel_args;
use hemi_engine::{DType, Layout, Result};

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
