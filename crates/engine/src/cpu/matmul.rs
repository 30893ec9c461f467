//! CPU matrix products through the `gemm` crate (f32 and f64 kernels). F16/BF16 operands are
//! widened to f32 (exact), multiplied with f32 accumulation and rounded once at the output, so
//! the result obeys DESIGN.md's GEMM bound with `u_out` of the output dtype.

use super::compute::{host, Compute};
use super::wrap;
use crate::backend::{check_matmul, MatmulSpec};
use crate::{CpuStorage, Error, Layout, Result, StorageRef};
use gemm::Parallelism;

/// `dst[m, n] = lhs[m, k] · rhs[k, n]` with element strides (row, col) for each operand;
/// `dst` is contiguous. All slices must cover the addressed elements (checked by callers).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_strided<T: 'static + Copy + num_traits::Zero + num_traits::One>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    lhs: &[T],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[T],
    (rhs_rs, rhs_cs): (usize, usize),
    accumulate: bool,
    parallel: bool,
) {
    assert!(dst.len() >= m * n, "gemm_strided: dst too small");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].iter_mut().for_each(|x| *x = T::zero());
        }
        return;
    }
    assert!(
        lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs,
        "gemm_strided: lhs too small"
    );
    assert!(
        rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs,
        "gemm_strided: rhs too small"
    );
    let par = if parallel && m * n * k >= 1 << 18 {
        Parallelism::Rayon(rayon::current_num_threads())
    } else {
        Parallelism::None
    };
    // SAFETY: the asserts above show every element addressed through the strides lies in the
    // slices; `dst` is exclusively borrowed and does not alias the inputs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            par,
        );
    }
}

fn batched<T: 'static + Copy + num_traits::Zero + num_traits::One + Send + Sync>(
    lhs: &[T],
    ll: &Layout,
    rhs: &[T],
    rl: &Layout,
    spec: &MatmulSpec,
) -> Vec<T> {
    let MatmulSpec { batch, m, n, k } = *spec;
    let mut out = vec![T::zero(); batch * m * n];
    let (ls, rs) = (ll.strides(), rl.strides());
    for (b, dst) in out.chunks_mut((m * n).max(1)).enumerate().take(batch) {
        let lo = ll.offset() + b * ls[0];
        let ro = rl.offset() + b * rs[0];
        gemm_strided(
            (m, n, k),
            dst,
            &lhs[lo..],
            (ls[1], ls[2]),
            &rhs[ro..],
            (rs[1], rs[2]),
            false,
            true,
        );
    }
    out
}

/// Batched matmul, see [`MatmulSpec`].
pub(crate) fn matmul(
    lhs: &StorageRef,
    ll: &Layout,
    rhs: &StorageRef,
    rl: &Layout,
    spec: &MatmulSpec,
) -> Result<CpuStorage> {
    let (a, b) = (host("matmul", lhs)?, host("matmul", rhs)?);
    if a.dtype() != b.dtype() {
        return Err(Error::dtype(
            "matmul",
            format!("lhs is {} but rhs is {}", a.dtype(), b.dtype()),
        ));
    }
    Ok(match (&*a, &*b) {
        (CpuStorage::F32(x), CpuStorage::F32(y)) => CpuStorage::F32(batched(x, ll, y, rl, spec)),
        (CpuStorage::F64(x), CpuStorage::F64(y)) => CpuStorage::F64(batched(x, ll, y, rl, spec)),
        (CpuStorage::I64(_), _) => return Err(Error::dtype("matmul", "int64 operands")),
        _ => {
            let wide_a = super::compute::to_compute("matmul", &a, ll)?;
            let wide_b = super::compute::to_compute("matmul", &b, rl)?;
            let (Compute::F32(x), Compute::F32(y)) = (wide_a, wide_b) else {
                return Err(Error::dtype("matmul", "unexpected compute type"));
            };
            // The gather made both operands contiguous (a broadcast batch is copied).
            let (la, lb) = (
                Layout::contiguous([spec.batch, spec.m, spec.k]),
                Layout::contiguous([spec.batch, spec.k, spec.n]),
            );
            Compute::F32(batched(&x, &la, &y, &lb, spec)).into_storage(a.dtype())
        }
    })
}

impl crate::backend::MatmulOps for super::CpuBackend {
    fn matmul(
        &self,
        lhs: &StorageRef,
        lhs_layout: &Layout,
        rhs: &StorageRef,
        rhs_layout: &Layout,
        spec: &MatmulSpec,
    ) -> Result<StorageRef> {
        check_matmul(lhs, lhs_layout, rhs, rhs_layout, spec)?;
        Ok(wrap(matmul(lhs, lhs_layout, rhs, rhs_layout, spec)?))
    }
}
