//! CPU softmax / log-softmax along one dim and fused cross-entropy with integer targets.
//!
//! Every line is shifted by its maximum first and every sum is pairwise ([`super::sum`]), so
//! nothing cancels: `log_softmax(x)_j = (x_j − m) − log Σ exp(x − m)` and the cross-entropy of
//! a row is `log Σ exp(x − m) − (x_t − m)` (never `(m + log Σ …) − x_t`, which loses the digits
//! of a small loss under large logits). Bound for a row of `C` logits with max `m`, in the
//! compute type with unit roundoff u (2^-24 for F16/BF16/F32 logits):
//! `|loss − loss64| ≤ (2·⌈log2 C⌉ + 8)·u·(1 + |loss64| + max_c |x_c − m|)` per sample,
//! whatever the logits' magnitude; a mean or sum over `N` samples adds `2·(⌈log2 N⌉ + 1)·u`
//! times the summed magnitudes. The output dtype's rounding comes on top.

use super::compute::{all_to_compute, check_len, count, host, map_compute, scalar, Compute};
use super::sum::{pairwise_sum, pairwise_sum_by};
use super::wrap;
use crate::backend::{CrossEntropySpec, Reduction};
use crate::{CpuStorage, Error, Result, StorageRef};
use num_traits::{Float, One, Zero};
use rayon::prelude::*;

/// Softmax (or log-softmax) of one `[size]` line with stride `inner`, written in place.
fn softmax_line<T: Float + Send + Sync>(
    v: &mut [T],
    base: usize,
    size: usize,
    inner: usize,
    log: bool,
) {
    let at = |j: usize| base + j * inner;
    let max = (0..size).fold(T::neg_infinity(), |m, j| m.max(v[at(j)]));
    let max = if max.is_finite() { max } else { T::zero() };
    let line: &[T] = v;
    let sum = pairwise_sum_by(size, |j| (line[at(j)] - max).exp());
    if log {
        let lse = sum.ln();
        (0..size).for_each(|j| v[at(j)] = v[at(j)] - max - lse);
    } else {
        (0..size).for_each(|j| v[at(j)] = (v[at(j)] - max).exp() / sum);
    }
}

/// Softmax along the middle dim of contiguous `[outer, size, inner]`.
pub(crate) fn softmax(
    x: &StorageRef,
    (outer, size, inner): (usize, usize, usize),
    log: bool,
) -> Result<CpuStorage> {
    const OP: &str = "softmax";
    let xh = host(OP, x)?;
    check_len(OP, "input", xh.len(), outer * size * inner)?;
    let c = all_to_compute(OP, &xh)?;
    let block = (size * inner).max(1);
    let out = map_compute!(c, |v: T| {
        let mut v = v;
        v.par_chunks_mut(block).for_each(|b| {
            for i in 0..inner {
                softmax_line(b, i, size, inner, log);
            }
        });
        v
    });
    out.into_storage(xh.dtype())
}

/// Gradient of softmax (`y·(dy − Σ dy·y)`) or log-softmax (`dy − e^y·Σ dy`) from output `y`.
pub(crate) fn softmax_backward(
    y: &StorageRef,
    dy: &StorageRef,
    (outer, size, inner): (usize, usize, usize),
    log: bool,
) -> Result<CpuStorage> {
    const OP: &str = "softmax_backward";
    let (yh, gh) = (host(OP, y)?, host(OP, dy)?);
    check_len(OP, "output", yh.len(), outer * size * inner)?;
    check_len(OP, "grad_output", gh.len(), outer * size * inner)?;
    let block = (size * inner).max(1);
    let out = match (all_to_compute(OP, &yh)?, all_to_compute(OP, &gh)?) {
        (Compute::F32(y), Compute::F32(g)) => {
            Compute::F32(softmax_grad(&y, &g, block, size, inner, log)?)
        }
        (Compute::F64(y), Compute::F64(g)) => {
            Compute::F64(softmax_grad(&y, &g, block, size, inner, log)?)
        }
        _ => {
            return Err(Error::dtype(
                OP,
                format!("output {} and grad {}", yh.dtype(), gh.dtype()),
            ))
        }
    };
    out.into_storage(gh.dtype())
}

fn softmax_grad<T: Float + bytemuck::Pod + Send + Sync>(
    y: &[T],
    g: &[T],
    block: usize,
    size: usize,
    inner: usize,
    log: bool,
) -> Result<Vec<T>> {
    let mut dx = crate::alloc::filled(y.len(), T::zero())?;
    dx.par_chunks_mut(block).enumerate().for_each(|(b, d)| {
        let (yb, gb) = (&y[b * block..][..d.len()], &g[b * block..][..d.len()]);
        for i in 0..inner {
            let at = |j: usize| i + j * inner;
            if log {
                let s = pairwise_sum_by(size, |j| gb[at(j)]);
                (0..size).for_each(|j| d[at(j)] = gb[at(j)] - yb[at(j)].exp() * s);
            } else {
                let s = pairwise_sum_by(size, |j| gb[at(j)] * yb[at(j)]);
                (0..size).for_each(|j| d[at(j)] = yb[at(j)] * (gb[at(j)] - s));
            }
        }
    });
    Ok(dx)
}

/// Validated targets: `None` for ignored samples, else the class.
fn targets(
    op: &'static str,
    t: &StorageRef,
    n: usize,
    c: usize,
    spec: &CrossEntropySpec,
) -> Result<Vec<Option<usize>>> {
    let th = host(op, t)?;
    let tv = th.as_slice::<i64>().map_err(|_| {
        Error::dtype(
            op,
            format!("targets must be int64 class indices, got {}", th.dtype()),
        )
    })?;
    check_len(op, "targets", tv.len(), n)?;
    tv.iter()
        .enumerate()
        .map(|(i, &t)| {
            if t == spec.ignore_index {
                Ok(None)
            } else if t < 0 || t as usize >= c {
                Err(Error::TargetOutOfRange {
                    op,
                    target: t,
                    index: i,
                    classes: c,
                })
            } else {
                Ok(Some(t as usize))
            }
        })
        .collect()
}

fn check_spec(op: &'static str, spec: &CrossEntropySpec) -> Result<()> {
    if !(0.0..=1.0).contains(&spec.label_smoothing) {
        return Err(Error::invalid(
            op,
            format!("label_smoothing {} must be in [0, 1]", spec.label_smoothing),
        ));
    }
    Ok(())
}

/// The largest logit of a row, or 0 when that is not finite (so `x − m` stays meaningful).
fn row_max<T: Float>(row: &[T]) -> T {
    let max = row.iter().fold(T::neg_infinity(), |m, &v| m.max(v));
    if max.is_finite() {
        max
    } else {
        T::zero()
    }
}

/// Per-sample loss `−(1−ε)·logp[y] − ε/C·Σ_c logp[c]` (0 for ignored samples).
fn per_sample<T: Float + Send + Sync>(
    x: &[T],
    tg: &[Option<usize>],
    c: usize,
    eps: f64,
) -> Result<Vec<T>> {
    let (eps, cf) = (scalar::<T>(eps), count::<T>(c));
    let rows = x.par_chunks(c.max(1)).zip(tg.par_iter()).map(|(row, t)| {
        let Some(t) = *t else { return T::zero() };
        let max = row_max(row);
        // Both terms relative to the max: nothing large is added and subtracted again.
        let lse = pairwise_sum_by(row.len(), |j| (row[j] - max).exp()).ln();
        let nll = lse - (row[t] - max);
        if eps == T::zero() {
            nll
        } else {
            // mean_c(lse − (x_c − m)) = lse − Σ(x_c − m)/C
            let mean_nll = lse - pairwise_sum_by(row.len(), |j| row[j] - max) / cf;
            (T::one() - eps) * nll + eps * mean_nll
        }
    });
    crate::alloc::par_collect(rows)
}

/// Fused cross-entropy of `[n, c]` logits against I64 targets (PyTorch semantics: the mean
/// divides by the number of non-ignored samples).
pub(crate) fn cross_entropy(
    logits: &StorageRef,
    t: &StorageRef,
    (n, c): (usize, usize),
    spec: &CrossEntropySpec,
) -> Result<CpuStorage> {
    const OP: &str = "cross_entropy";
    check_spec(OP, spec)?;
    let lh = host(OP, logits)?;
    check_len(OP, "logits", lh.len(), n * c)?;
    let tg = targets(OP, t, n, c, spec)?;
    let valid = tg.iter().filter(|t| t.is_some()).count();
    let out = map_compute!(all_to_compute(OP, &lh)?, |x: T| {
        let l = per_sample(&x, &tg, c, spec.label_smoothing)?;
        match spec.reduction {
            Reduction::None => l,
            Reduction::Sum => vec![pairwise_sum(&l)],
            Reduction::Mean => vec![pairwise_sum(&l) / count::<T>(valid)],
        }
    });
    out.into_storage(lh.dtype())
}

/// Gradient of [`cross_entropy`]: `(softmax − ((1−ε)·onehot + ε/C)) · g_i` per sample.
pub(crate) fn cross_entropy_backward(
    logits: &StorageRef,
    t: &StorageRef,
    dloss: &StorageRef,
    (n, c): (usize, usize),
    spec: &CrossEntropySpec,
) -> Result<CpuStorage> {
    const OP: &str = "cross_entropy_backward";
    check_spec(OP, spec)?;
    let lh = host(OP, logits)?;
    check_len(OP, "logits", lh.len(), n * c)?;
    let tg = targets(OP, t, n, c, spec)?;
    let valid = tg.iter().filter(|t| t.is_some()).count();
    let gh = host(OP, dloss)?;
    let want = if spec.reduction == Reduction::None {
        n
    } else {
        1
    };
    check_len(OP, "grad_output", gh.len(), want)?;
    let g = super::compute::to_f64_vec(&gh, &crate::Layout::contiguous([want]))?;
    let weight = |i: usize| match spec.reduction {
        Reduction::None => g[i],
        Reduction::Sum => g[0],
        Reduction::Mean => g[0] / valid as f64,
    };
    let out = map_compute!(all_to_compute(OP, &lh)?, |x: T| {
        let mut dx = crate::alloc::filled(x.len(), T::zero())?;
        let (eps, cf) = (scalar::<T>(spec.label_smoothing), count::<T>(c));
        dx.par_chunks_mut(c.max(1)).enumerate().for_each(|(i, d)| {
            let Some(t) = tg[i] else { return };
            let row = &x[i * c..][..c];
            let w = scalar::<T>(weight(i));
            let max = row_max(row);
            let sum = pairwise_sum_by(row.len(), |j| (row[j] - max).exp());
            for (j, o) in d.iter_mut().enumerate() {
                let p = (row[j] - max).exp() / sum;
                let target = if j == t { T::one() - eps } else { T::zero() } + eps / cf;
                *o = (p - target) * w;
            }
        });
        dx
    });
    out.into_storage(lh.dtype())
}

impl crate::backend::LossOps for super::CpuBackend {
    fn softmax(
        &self,
        x: &StorageRef,
        dims: (usize, usize, usize),
        log: bool,
    ) -> Result<StorageRef> {
        Ok(wrap(softmax(x, dims, log)?))
    }

    fn softmax_backward(
        &self,
        y: &StorageRef,
        dy: &StorageRef,
        dims: (usize, usize, usize),
        log: bool,
    ) -> Result<StorageRef> {
        Ok(wrap(softmax_backward(y, dy, dims, log)?))
    }

    fn cross_entropy(
        &self,
        logits: &StorageRef,
        targets: &StorageRef,
        n_c: (usize, usize),
        spec: &CrossEntropySpec,
    ) -> Result<StorageRef> {
        Ok(wrap(cross_entropy(logits, targets, n_c, spec)?))
    }

    fn cross_entropy_backward(
        &self,
        logits: &StorageRef,
        targets: &StorageRef,
        dloss: &StorageRef,
        n_c: (usize, usize),
        spec: &CrossEntropySpec,
    ) -> Result<StorageRef> {
        Ok(wrap(cross_entropy_backward(
            logits, targets, dloss, n_c, spec,
        )?))
    }
}
