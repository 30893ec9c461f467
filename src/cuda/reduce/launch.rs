//! Typed launch of `kernels-cu/reduce.cu`.

use crate::cuda::driver::LaunchConfig;
use crate::cuda::launch::{float_suffix, launch, Strided, MAX_BLOCKS, THREADS};
use crate::cuda::operand::{expect_dtype, expect_len, same_device, Span, View};
use crate::kernel_args;
use hemi_engine::backend::ReduceOp;
use hemi_engine::Result;

/// Reduces the view `x` — kept dims first, then reduced dims, `outer` × `chunk` elements —
/// into the `outer` elements of `y` (same dtype).
pub fn reduce(
    op: ReduceOp,
    x: &View<'_>,
    y: &Span<'_>,
    (outer, chunk): (usize, usize),
) -> Result<()> {
    const OP: &str = "reduce";
    expect_dtype(OP, "the output", y.dtype(), x.dtype())?;
    expect_len(OP, "the output", y.len(), outer)?;
    expect_len(OP, "the input", x.elem_count(), outer * chunk)?;
    same_device(OP, x.device(), [y.device()])?;
    if outer == 0 {
        return Ok(());
    }
    let d = x.driver();
    let name = format!("reduce_{}", float_suffix(OP, d.device(), x.dtype())?);
    let code = match op {
        ReduceOp::Sum => 0,
        ReduceOp::Mean => 1,
        ReduceOp::Max => 2,
        ReduceOp::Min => 3,
    };
    let (mut code, mut xp, mut yp) = (code, x.base(), y.ptr());
    let mut xs = Strided::new(OP, x.layout())?;
    let (mut o, mut c) = (outer as i64, chunk as i64);
    let mut a = kernel_args![code, xp, xs, yp, o, c];
    let cfg = LaunchConfig::linear(outer * 32, THREADS, MAX_BLOCKS);
    // SAFETY: reduce_T(int, const T*, Strided, T*, long long, long long); `x` is a checked
    // view of outer·chunk elements, `y` holds `outer`.
    unsafe { launch(d, &name, cfg, &mut a) }
}
