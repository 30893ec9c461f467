//! CPU reductions over a set of dims. Sums and means add pairwise ([`super::sum`]): for `n`
//! reduced elements `|s − Σx| ≤ ⌈log2 n⌉·u·Σ|x|` before the one rounding into the output
//! dtype (u = 2^-24 for F16/BF16/F32 inputs, 2^-53 for F64); a mean adds one more rounding
//! for the division. Max and min are exact.

use super::compute::{count, map_compute_ref, to_compute_ref, PAR_THRESHOLD};
use super::sum::pairwise_sum;
use super::{compute::host, wrap};
use crate::backend::ReduceOp;
use crate::StorageRef;
use crate::{CpuStorage, Layout, Result};
use num_traits::Float;
use rayon::prelude::*;

fn reduce_chunk<T: Float + Send + Sync>(op: ReduceOp, chunk: &[T]) -> T {
    match op {
        ReduceOp::Sum => pairwise_sum(chunk),
        ReduceOp::Mean => pairwise_sum(chunk) / count::<T>(chunk.len()),
        ReduceOp::Max => chunk.iter().fold(T::neg_infinity(), |a, &b| {
            if a.is_nan() || b.is_nan() {
                T::nan()
            } else {
                a.max(b)
            }
        }),
        ReduceOp::Min => chunk.iter().fold(T::infinity(), |a, &b| {
            if a.is_nan() || b.is_nan() {
                T::nan()
            } else {
                a.min(b)
            }
        }),
    }
}

/// Reduces `dims` (sorted, unique) of a float view; the output keeps them as size 1.
/// An empty reduction gives 0 for sum, NaN for mean, -inf/+inf for max/min.
pub(crate) fn reduce(
    op: ReduceOp,
    s: &CpuStorage,
    layout: &Layout,
    dims: &[usize],
) -> Result<CpuStorage> {
    let rank = layout.shape().rank();
    let kept: Vec<usize> = (0..rank).filter(|d| !dims.contains(d)).collect();
    let perm: Vec<usize> = kept.iter().chain(dims.iter()).copied().collect();
    let permuted = layout.permute(&perm);
    let chunk: usize = dims.iter().map(|&d| layout.dims()[d]).product();
    let outer: usize = kept.iter().map(|&d| layout.dims()[d]).product();
    let c = to_compute_ref("reduce", s, &permuted)?;
    let out = map_compute_ref!(c, |v: T| {
        if chunk == 0 {
            crate::alloc::filled(outer, reduce_chunk::<T>(op, &[]))?
        } else if v.len() >= PAR_THRESHOLD && outer > 1 {
            crate::alloc::par_collect(v.par_chunks(chunk).map(|c| reduce_chunk(op, c)))?
        } else {
            crate::alloc::collect(outer, v.chunks(chunk).map(|c| reduce_chunk(op, c)))?
        }
    });
    out.into_storage(s.dtype())
}

impl crate::backend::ReduceOps for super::CpuBackend {
    fn reduce(
        &self,
        op: ReduceOp,
        s: &StorageRef,
        layout: &Layout,
        dims: &[usize],
    ) -> Result<StorageRef> {
        crate::backend::check_reduce(s, layout, dims)?;
        Ok(wrap(reduce(op, &*host("reduce", s)?, layout, dims)?))
    }
}
