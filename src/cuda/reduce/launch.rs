//! Typed launch of `kernels-cu/reduce.cu`.

use crate::cuda::driver::{DevicePtr, Driver, LaunchConfig};
use crate::cuda::launch::{float_suffix, launch, Strided, MAX_BLOCKS, THREADS};
use crate::kernel_args;
use hemi_engine::backend::ReduceOp;
use hemi_engine::{DType, Layout, Result};

/// Reduces the permuted view `xl` (kept dims first, reduced dims last) into `outer` outputs
/// of `chunk` elements each.
pub fn reduce(
    d: &dyn Driver,
    op: ReduceOp,
    dt: DType,
    x: DevicePtr,
    xl: &Layout,
    y: DevicePtr,
    (outer, chunk): (usize, usize),
) -> Result<()> {
    let name = format!("reduce_{}", float_suffix("reduce", d.device(), dt)?);
    let code = match op {
        ReduceOp::Sum => 0,
        ReduceOp::Mean => 1,
        ReduceOp::Max => 2,
        ReduceOp::Min => 3,
    };
    let (mut code, mut x, mut y) = (code, x, y);
    let mut xs = Strided::new("reduce", xl)?;
    let (mut o, mut c) = (outer as i64, chunk as i64);
    let mut a = kernel_args![code, x, xs, y, o, c];
    let cfg = LaunchConfig::linear(outer * 32, THREADS, MAX_BLOCKS);
    // SAFETY: reduce_T(int, const T*, Strided, T*, long long, long long); `y` holds `outer`.
    unsafe { launch(d, &name, cfg, &mut a) }
}
