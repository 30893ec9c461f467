//! CPU batch normalization over `[N, C, S]` (S = product of spatial dims), training mode.
//! Statistics are accumulated in f64, pairwise, and stored in the weight's dtype; the output is computed
//! in f32 (f64 when any operand is F64) and rounded once into the input's dtype.

use super::compute::{host, to_f64_vec};
use super::sum::pairwise_sum_by;
use crate::backend::{BatchNormBackward, BatchNormForward};
use crate::{DType, Error, Layout, Result, StorageRef};
use rayon::prelude::*;

fn wide(op: &'static str, s: &StorageRef, want: usize, what: &str) -> Result<(Vec<f64>, DType)> {
    let h = host(op, s)?;
    if h.dtype() == DType::I64 {
        return Err(Error::dtype(op, format!("{what} must be a float tensor")));
    }
    if h.len() != want {
        return Err(Error::shape(
            op,
            format!("{what} has {} elements, expected {want}", h.len()),
        ));
    }
    Ok((to_f64_vec(&h, &Layout::contiguous([h.len()]))?, h.dtype()))
}

/// Rounds like the compute type would (f32 unless F64 is involved), then into `dtype`.
fn store(mut v: Vec<f64>, compute_f64: bool, dtype: DType) -> Result<StorageRef> {
    if !compute_f64 {
        v.iter_mut().for_each(|x| *x = *x as f32 as f64);
    }
    Ok(super::wrap(super::compute::from_f64(v, dtype)?))
}

/// Two f64 sums carried through one pairwise pass (component-wise addition).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Pair(f64, f64);

impl std::ops::Add for Pair {
    type Output = Pair;
    fn add(self, o: Pair) -> Pair {
        Pair(self.0 + o.0, self.1 + o.1)
    }
}

impl num_traits::Zero for Pair {
    fn zero() -> Pair {
        Pair(0.0, 0.0)
    }
    fn is_zero(&self) -> bool {
        self.0 == 0.0 && self.1 == 0.0
    }
}

/// Pairwise sum (f64, or a [`Pair`] of them) of `term(flat index)` over the `N·S` values of
/// channel `ch` in a contiguous `[N, C, S]` tensor — pairwise within each image's plane, then
/// across images: at most `(⌈log2 S⌉ + ⌈log2 N⌉)·2^-53·Σ|term|` per component.
fn channel_sum<T: num_traits::Zero + Copy + Send>(
    (n, c, s): (usize, usize, usize),
    ch: usize,
    term: impl Fn(usize) -> T + Sync,
) -> T {
    pairwise_sum_by(n, |img| {
        let base = (img * c + ch) * s;
        pairwise_sum_by(s, |j| term(base + j))
    })
}

/// Training-mode forward: batch mean, biased variance, invstd and the normalized output.
pub(crate) fn batch_norm_train(
    x: &StorageRef,
    weight: &StorageRef,
    bias: &StorageRef,
    dims: (usize, usize, usize),
    eps: f64,
    relu: bool,
) -> Result<BatchNormForward> {
    const OP: &str = "batch_norm";
    let (n, c, s) = dims;
    let (xv, xdt) = wide(OP, x, n * c * s, "input")?;
    let (wv, wdt) = wide(OP, weight, c, "weight")?;
    let (bv, _) = wide(OP, bias, c, "bias")?;
    let m = (n * s) as f64;
    if n * s == 0 {
        return Err(Error::invalid(
            OP,
            format!("no values per channel in input [{n}, {c}, {s}]"),
        ));
    }
    let f64c = xdt == DType::F64 || wdt == DType::F64;
    let stats: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let mean = channel_sum(dims, ch, |i| xv[i]) / m;
            let var = channel_sum(dims, ch, |i| (xv[i] - mean).powi(2)) / m;
            (mean, var)
        })
        .collect();
    let invstd: Vec<f64> = stats.iter().map(|&(_, v)| 1.0 / (v + eps).sqrt()).collect();
    let mut y = crate::alloc::filled(xv.len(), 0.0)?;
    y.par_chunks_mut(s.max(1))
        .enumerate()
        .for_each(|(row, out)| {
            let ch = row % c;
            let scale = invstd[ch] * wv[ch];
            let shift = bv[ch] - stats[ch].0 * scale;
            for (o, &xi) in out.iter_mut().zip(&xv[row * s..]) {
                let v = xi * scale + shift;
                *o = if relu && v <= 0.0 { 0.0 } else { v };
            }
        });
    Ok(BatchNormForward {
        y: store(y, f64c, xdt)?,
        mean: store(stats.iter().map(|s| s.0).collect(), f64c, wdt)?,
        var: store(stats.iter().map(|s| s.1).collect(), f64c, wdt)?,
        invstd: store(invstd, f64c, wdt)?,
    })
}

/// Backward of [`batch_norm_train`]: `dx = w·invstd/M · (M·dy − Σdy − x̂·Σ(dy·x̂))`,
/// `dweight = Σ(dy·x̂)`, `dbias = Σdy`; with `relu_out`, dy is 0 where the ReLU output is ≤ 0.
#[allow(clippy::too_many_arguments)]
pub(crate) fn batch_norm_backward(
    dy: &StorageRef,
    x: &StorageRef,
    weight: &StorageRef,
    mean: &StorageRef,
    invstd: &StorageRef,
    dims: (usize, usize, usize),
    relu_out: Option<&StorageRef>,
) -> Result<BatchNormBackward> {
    const OP: &str = "batch_norm_backward";
    let (n, c, s) = dims;
    let (mut dyv, _) = wide(OP, dy, n * c * s, "grad_output")?;
    if let Some(z) = relu_out {
        let (zv, _) = wide(OP, z, n * c * s, "the ReLU output")?;
        dyv.iter_mut()
            .zip(zv)
            .filter(|(_, z)| *z <= 0.0)
            .for_each(|(g, _)| *g = 0.0);
    }
    let (xv, xdt) = wide(OP, x, n * c * s, "input")?;
    let (wv, wdt) = wide(OP, weight, c, "weight")?;
    let (mv, _) = wide(OP, mean, c, "mean")?;
    let (iv, _) = wide(OP, invstd, c, "invstd")?;
    let f64c = xdt == DType::F64 || wdt == DType::F64;
    let m = (n * s) as f64;
    let sums: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let Pair(sd, sdx) = channel_sum(dims, ch, |i| {
                Pair(dyv[i], dyv[i] * (xv[i] - mv[ch]) * iv[ch])
            });
            (sd, sdx)
        })
        .collect();
    let mut dx = crate::alloc::filled(xv.len(), 0.0)?;
    dx.par_chunks_mut(s.max(1))
        .enumerate()
        .for_each(|(row, out)| {
            let ch = row % c;
            let (sd, sdx) = sums[ch];
            let k = wv[ch] * iv[ch] / m;
            for (j, o) in out.iter_mut().enumerate() {
                let i = row * s + j;
                let xhat = (xv[i] - mv[ch]) * iv[ch];
                *o = k * (m * dyv[i] - sd - xhat * sdx);
            }
        });
    Ok(BatchNormBackward {
        dx: store(dx, f64c, xdt)?,
        dweight: store(sums.iter().map(|s| s.1).collect(), f64c, wdt)?,
        dbias: store(sums.iter().map(|s| s.0).collect(), f64c, wdt)?,
    })
}

impl crate::backend::NormOps for super::CpuBackend {
    fn batch_norm_train(
        &self,
        x: &StorageRef,
        weight: &StorageRef,
        bias: &StorageRef,
        dims: (usize, usize, usize),
        eps: f64,
        relu: bool,
    ) -> Result<BatchNormForward> {
        batch_norm_train(x, weight, bias, dims, eps, relu)
    }

    fn batch_norm_backward(
        &self,
        dy: &StorageRef,
        x: &StorageRef,
        weight: &StorageRef,
        mean: &StorageRef,
        invstd: &StorageRef,
        dims: (usize, usize, usize),
        relu_out: Option<&StorageRef>,
    ) -> Result<BatchNormBackward> {
        batch_norm_backward(dy, x, weight, mean, invstd, dims, relu_out)
    }
}
