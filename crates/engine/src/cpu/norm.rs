//! CPU batch normalization over `[N, C, S]` (S = product of spatial dims), training mode.
//! Statistics are accumulated in f64 (8-lane blocks of 128 combined pairwise: an error growing
//! like log n, far below the f32 rounding they are stored with) and stored in the weight's
//! dtype; the output is computed
//! in f64 and rounded once to f32 (kept in f64 when any operand is F64), then into the input's
//! dtype.
//!
//! F16, BF16 and F32 inputs are read as f32 (exact), F32 ones in place; only the per-channel
//! vectors are widened to f64, and every pass over the elements runs in parallel.

use super::compute::{host, to_f64_vec};
use super::convert::with_wide_vectors;
use super::sum::{blocked_sums, pairwise_sum_by, BLOCK};
use crate::backend::{BatchNormBackward, BatchNormForward};
use crate::{alloc, CpuStorage, DType, Error, Layout, Result, StorageRef};
use rayon::prelude::*;
use std::borrow::Cow;

fn check_float(op: &'static str, h: &CpuStorage, want: usize, what: &str) -> Result<()> {
    if h.dtype() == DType::I64 {
        return Err(Error::dtype(op, format!("{what} must be a float tensor")));
    }
    if h.len() != want {
        return Err(Error::shape(
            op,
            format!("{what} has {} elements, expected {want}", h.len()),
        ));
    }
    Ok(())
}

/// A per-channel (or any small) operand widened to f64, with its dtype.
fn wide(op: &'static str, s: &StorageRef, want: usize, what: &str) -> Result<(Vec<f64>, DType)> {
    let h = host(op, s)?;
    check_float(op, &h, want, what)?;
    Ok((to_f64_vec(&h, &Layout::contiguous([h.len()]))?, h.dtype()))
}

/// The elements of a non-F64 float storage as f32 (exact; F32 borrowed), or `None` for F64.
fn as_f32(h: &CpuStorage) -> Result<Option<Cow<'_, [f32]>>> {
    Ok(match h {
        CpuStorage::F32(v) => Some(Cow::Borrowed(v)),
        CpuStorage::F16(v) => Some(Cow::Owned(super::convert::widened(v)?)),
        CpuStorage::BF16(v) => Some(Cow::Owned(super::convert::widened(v)?)),
        CpuStorage::F64(_) | CpuStorage::I64(_) => None,
    })
}

/// Hands a widened copy back to the host cache (a borrow has none).
fn recycle(v: Cow<'_, [f32]>) {
    if let Cow::Owned(v) = v {
        alloc::recycle(v);
    }
}

/// Rounds like the compute type would (f32 unless F64 is involved), then into `dtype`.
fn store(mut v: Vec<f64>, compute_f64: bool, dtype: DType) -> Result<StorageRef> {
    if !compute_f64 {
        v.iter_mut().for_each(|x| *x = *x as f32 as f64);
    }
    Ok(super::wrap(super::compute::from_f64(v, dtype)?))
}

/// `K` sums over the `N·S` values of channel `ch` in a contiguous `[N, C, S]` tensor: per image,
/// [`blocked_sums`] over the plane (`fill(plane start, range in the plane, bufs)` writes the
/// terms), then pairwise across images — at most `(19 + ⌈log2 ⌈S/128⌉⌉ + ⌈log2 N⌉)·2^-53·Σ|term|`
/// per sum. (Inlined, so the block loops get the caller's vector width.)
#[inline(always)]
fn channel_sums<const K: usize>(
    (n, c, s): (usize, usize, usize),
    ch: usize,
    fill: impl Fn(usize, std::ops::Range<usize>, &mut [[f64; BLOCK]; K]) + Sync,
) -> [f64; K] {
    let per_image = |img: usize| {
        let base = (img * c + ch) * s;
        blocked_sums(s, &|r, bufs: &mut [[f64; BLOCK]; K]| fill(base, r, bufs))
    };
    if n == 1 {
        return per_image(0);
    }
    let sums: Vec<[f64; K]> = (0..n).map(per_image).collect();
    std::array::from_fn(|k| pairwise_sum_by(n, |img| sums[img][k]))
}

/// Per-channel pairs of f64 sums: (mean, var) forward, (Σdy, Σdy·x̂) backward.
type ChannelPairs = Vec<(f64, f64)>;

/// An element type the statistics read (f32 or f64) and the output type it is rounded to.
trait Elem: bytemuck::Pod + Send + Sync + Into<f64> {
    /// `v` rounded into this type (f32: once, to nearest).
    fn round(v: f64) -> Self;
}

impl Elem for f32 {
    fn round(v: f64) -> f32 {
        v as f32
    }
}

impl Elem for f64 {
    fn round(v: f64) -> f64 {
        v
    }
}

/// Per-channel parameters of the forward pass.
struct Affine<'a> {
    weight: &'a [f64],
    bias: &'a [f64],
    eps: f64,
    relu: bool,
}

/// Forward over elements read as `T`: `(y, [(mean, var)], invstd)`.
fn train_core<T: Elem>(
    xv: &[T],
    dims: (usize, usize, usize),
    p: &Affine<'_>,
) -> Result<(Vec<T>, ChannelPairs, Vec<f64>)> {
    let (n, c, s) = dims;
    let m = (n * s) as f64;
    let stats: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            with_wide_vectors(
                #[inline(always)]
                move || {
                    let [sum] = channel_sums(dims, ch, move |base, r, [b]| {
                        for (t, &x) in b.iter_mut().zip(&xv[base + r.start..base + r.end]) {
                            *t = x.into();
                        }
                    });
                    let mean = sum / m;
                    let [sq] = channel_sums(dims, ch, move |base, r, [b]| {
                        for (t, &x) in b.iter_mut().zip(&xv[base + r.start..base + r.end]) {
                            *t = (x.into() - mean).powi(2);
                        }
                    });
                    (mean, sq / m)
                },
            )
        })
        .collect();
    let invstd: Vec<f64> = stats
        .iter()
        .map(|&(_, v)| 1.0 / (v + p.eps).sqrt())
        .collect();
    let mut y = alloc::for_overwrite::<T>(xv.len())?;
    y.par_chunks_mut(s.max(1))
        .zip(xv.par_chunks(s.max(1)))
        .enumerate()
        .for_each(|(row, (out, plane))| {
            let ch = row % c;
            let scale = invstd[ch] * p.weight[ch];
            let shift = p.bias[ch] - stats[ch].0 * scale;
            let relu = p.relu;
            with_wide_vectors(
                #[inline(always)]
                move || match relu {
                    true => {
                        for (o, &x) in out.iter_mut().zip(plane) {
                            let v = x.into() * scale + shift;
                            *o = T::round(if v <= 0.0 { 0.0 } else { v });
                        }
                    }
                    false => {
                        for (o, &x) in out.iter_mut().zip(plane) {
                            *o = T::round(x.into() * scale + shift);
                        }
                    }
                },
            )
        });
    Ok((y, stats, invstd))
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
    let (wv, wdt) = wide(OP, weight, c, "weight")?;
    let (bv, _) = wide(OP, bias, c, "bias")?;
    let p = Affine {
        weight: &wv,
        bias: &bv,
        eps,
        relu,
    };
    let xh = host(OP, x)?;
    check_float(OP, &xh, n * c * s, "input")?;
    let xdt = xh.dtype();
    if n * s == 0 {
        return Err(Error::invalid(
            OP,
            format!("no values per channel in input [{n}, {c}, {s}]"),
        ));
    }
    let f64c = xdt == DType::F64 || wdt == DType::F64;
    let (y, stats, invstd) = match as_f32(&xh)? {
        Some(xv) if !f64c => {
            let (y, stats, invstd) = train_core(&xv, dims, &p)?;
            recycle(xv);
            let y = super::wrap(super::compute::from_f32(y, xdt)?);
            (y, stats, invstd)
        }
        _ => {
            let xv = to_f64_vec(&xh, &Layout::contiguous([xh.len()]))?;
            let (y, stats, invstd) = train_core(&xv, dims, &p)?;
            (store(y, f64c, xdt)?, stats, invstd)
        }
    };
    Ok(BatchNormForward {
        y,
        mean: store(stats.iter().map(|s| s.0).collect(), f64c, wdt)?,
        var: store(stats.iter().map(|s| s.1).collect(), f64c, wdt)?,
        invstd: store(invstd, f64c, wdt)?,
    })
}

/// Per-channel values of the backward pass.
struct Saved<'a> {
    weight: &'a [f64],
    mean: &'a [f64],
    invstd: &'a [f64],
}

/// Backward over elements read as `T` (`relu` = the forward's fused ReLU output, whose
/// non-positive entries zero dy): `(dx, [(Σdy, Σdy·x̂)])`.
fn backward_core<T: Elem>(
    (dyv, xv, relu): (&[T], &[T], Option<&[T]>),
    dims: (usize, usize, usize),
    p: &Saved<'_>,
) -> Result<(Vec<T>, ChannelPairs)> {
    let (n, c, s) = dims;
    let m = (n * s) as f64;
    // dy, zeroed where the fused ReLU's output was not positive.
    #[inline(always)]
    fn grad<T: Elem>(d: T, z: T) -> f64 {
        if z.into() <= 0.0 {
            0.0
        } else {
            d.into()
        }
    }
    let zs = |r: std::ops::Range<usize>| relu.map(|z| &z[r]);
    let sums: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let mean = p.mean[ch];
            let [sd, sdxc] = with_wide_vectors(
                #[inline(always)]
                move || {
                    channel_sums(dims, ch, move |base, r, [bd, bx]| {
                        let r = base + r.start..base + r.end;
                        let (d, x, z) = (&dyv[r.clone()], &xv[r.clone()], zs(r));
                        let (bd, bx) = (&mut bd[..d.len()], &mut bx[..d.len()]);
                        match z {
                            Some(z) => {
                                for (((td, tx), (&d, &z)), &x) in
                                    bd.iter_mut().zip(bx.iter_mut()).zip(d.iter().zip(z)).zip(x)
                                {
                                    let g = grad(d, z);
                                    (*td, *tx) = (g, g * (x.into() - mean));
                                }
                            }
                            None => {
                                for ((td, tx), (&d, &x)) in
                                    bd.iter_mut().zip(bx.iter_mut()).zip(d.iter().zip(x))
                                {
                                    let g = d.into();
                                    (*td, *tx) = (g, g * (x.into() - mean));
                                }
                            }
                        }
                    })
                },
            );
            // Σ dy·x̂ = invstd · Σ dy·(x − mean)
            (sd, sdxc * p.invstd[ch])
        })
        .collect();
    let mut dx = alloc::for_overwrite::<T>(xv.len())?;
    dx.par_chunks_mut(s.max(1))
        .enumerate()
        .for_each(|(row, out)| {
            let ch = row % c;
            let (sd, sdx) = sums[ch];
            let (mean, invstd) = (p.mean[ch], p.invstd[ch]);
            let k = p.weight[ch] * invstd / m;
            let r = row * s..row * s + out.len();
            let (d, x, z) = (&dyv[r.clone()], &xv[r.clone()], zs(r));
            let value = move |g: f64, x: T| {
                let xhat = (x.into() - mean) * invstd;
                T::round(k * (m * g - sd - xhat * sdx))
            };
            with_wide_vectors(
                #[inline(always)]
                move || match z {
                    Some(z) => {
                        for ((o, (&d, &z)), &x) in out.iter_mut().zip(d.iter().zip(z)).zip(x) {
                            *o = value(grad(d, z), x);
                        }
                    }
                    None => {
                        for ((o, &g), &x) in out.iter_mut().zip(d).zip(x) {
                            *o = value(g.into(), x);
                        }
                    }
                },
            )
        });
    Ok((dx, sums))
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
    let len = n * c * s;
    let dyh = host(OP, dy)?;
    check_float(OP, &dyh, len, "grad_output")?;
    let zh = relu_out.map(|z| host(OP, z)).transpose()?;
    if let Some(z) = &zh {
        check_float(OP, z, len, "the ReLU output")?;
    }
    let xh = host(OP, x)?;
    check_float(OP, &xh, len, "input")?;
    let xdt = xh.dtype();
    let (wv, wdt) = wide(OP, weight, c, "weight")?;
    let (mv, _) = wide(OP, mean, c, "mean")?;
    let (iv, _) = wide(OP, invstd, c, "invstd")?;
    let p = Saved {
        weight: &wv,
        mean: &mv,
        invstd: &iv,
    };
    let f64c = xdt == DType::F64 || wdt == DType::F64;
    let narrow = if f64c || dyh.dtype() == DType::F64 {
        None
    } else {
        let z = match &zh {
            Some(z) => as_f32(z)?.map(Some),
            None => Some(None),
        };
        match (as_f32(&dyh)?, as_f32(&xh)?, z) {
            (Some(d), Some(xv), Some(z)) => Some((d, xv, z)),
            _ => None,
        }
    };
    let (dx, sums) = match narrow {
        Some((d, xv, z)) => {
            let (dx, sums) = backward_core((&d, &xv, z.as_deref()), dims, &p)?;
            recycle(d);
            recycle(xv);
            if let Some(z) = z {
                recycle(z);
            }
            (super::wrap(super::compute::from_f32(dx, xdt)?), sums)
        }
        None => {
            let all = Layout::contiguous([len]);
            let d = to_f64_vec(&dyh, &all)?;
            let xv = to_f64_vec(&xh, &all)?;
            let z = zh.as_ref().map(|z| to_f64_vec(z, &all)).transpose()?;
            let (dx, sums) = backward_core((&d, &xv, z.as_deref()), dims, &p)?;
            (store(dx, f64c, xdt)?, sums)
        }
    };
    Ok(BatchNormBackward {
        dx,
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
        super::in_pool(|| batch_norm_train(x, weight, bias, dims, eps, relu))
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
        super::in_pool(|| batch_norm_backward(dy, x, weight, mean, invstd, dims, relu_out))
    }
}
