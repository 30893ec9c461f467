//! CPU pooling over NCHW planes: max (with argmax indices), average and adaptive average,
//! forward and backward, parallel over the `n * c` planes.

use super::compute::{
    all_to_compute_ref, check_len, count, from_nchw, host, map_compute_ref, to_nchw,
};
use super::sum::{pairwise_sum, pairwise_sum_by};
use super::wrap;
use crate::backend::Pool2dSpec;
use crate::{CpuStorage, Error, MemoryFormat, Result, StorageRef};
use num_traits::{Float, Zero};
use rayon::prelude::*;
use std::ops::Range;

/// Input rows (or cols) under output position `o`: `o*stride - pad + t*dil` for each tap `t`
/// that lands inside `0..size`, in tap order. Only those taps are visited (a padded kernel may
/// be far longer than the input).
fn taps(
    o: usize,
    k: usize,
    stride: usize,
    pad: usize,
    dil: usize,
    size: usize,
) -> impl Iterator<Item = usize> {
    // Inside when `pad - o·stride <= t·dil < pad + size - o·stride` (the validated geometry
    // keeps `pad + size` and the indices from overflowing).
    let base = o * stride;
    let lo = pad.saturating_sub(base).div_ceil(dil);
    let hi = (pad + size).saturating_sub(base).div_ceil(dil).min(k);
    (lo..hi.max(lo)).map(move |t| base + t * dil - pad)
}

/// The input rows (or cols) an undilated window at output `o` covers, clipped to the input.
fn window(o: usize, k: usize, stride: usize, pad: usize, size: usize) -> Range<usize> {
    let start = (o * stride).saturating_sub(pad).min(size);
    let end = (o * stride + k).saturating_sub(pad).min(size);
    start..end.max(start)
}

/// Pairwise sum of `x[y * w + xx]` over a window — within each row, then across rows: error
/// at most `(⌈log2 rows⌉ + ⌈log2 cols⌉)·u·Σ|x|` (see `super::sum`).
fn window_sum<T: Float + Send + Sync>(x: &[T], w: usize, ys: Range<usize>, xs: Range<usize>) -> T {
    pairwise_sum_by(ys.len(), |r| {
        let row = (ys.start + r) * w;
        pairwise_sum(&x[row + xs.start..row + xs.end])
    })
}

/// The input indices under every output position along one axis, flattened: output `o`'s
/// taps are `taps[at[o]..at[o + 1]]` (computed once per call, not per output).
struct AxisTaps {
    taps: Vec<usize>,
    at: Vec<usize>,
}

impl AxisTaps {
    fn new(out: usize, k: usize, stride: usize, pad: usize, dil: usize, size: usize) -> Self {
        let mut at = vec![0];
        let mut all = Vec::new();
        for o in 0..out {
            all.extend(taps(o, k, stride, pad, dil, size));
            at.push(all.len());
        }
        AxisTaps { taps: all, at }
    }

    fn of(&self, o: usize) -> &[usize] {
        &self.taps[self.at[o]..self.at[o + 1]]
    }
}

/// For each kernel tap `t` along one axis that lies inside the input for some output: the
/// outputs where it does (a contiguous run), the input index under the run's first output
/// (the next output's is `stride` further). Taps that are never inside are left out, so the
/// list is at most `size + (out - 1)·stride` long however large the (padded) kernel.
fn tap_runs(
    out: usize,
    k: usize,
    stride: usize,
    pad: usize,
    dil: usize,
    size: usize,
) -> Vec<(Range<usize>, usize)> {
    // Tap `t` is inside for some output only if `t·dil` lies in
    // `pad - (out - 1)·stride .. pad + size` (the validated geometry keeps these in range).
    let reach = out.saturating_sub(1).saturating_mul(stride);
    let first = pad.saturating_sub(reach).div_ceil(dil);
    let last = pad.saturating_add(size).div_ceil(dil).min(k);
    (first..last)
        .filter_map(|t| {
            let inside = |o: usize| {
                (o * stride + t * dil)
                    .checked_sub(pad)
                    .filter(|&i| i < size)
            };
            let (lo, at) = (0..out).find_map(|o| inside(o).map(|i| (o, i)))?;
            let hi = (lo..out).find(|&o| inside(o).is_none()).unwrap_or(out);
            Some((lo..hi, at))
        })
        .collect()
}

/// Max pooling of one plane `x [h, w]` (`w` given) over the windows of `ys × xs` (`runs`: the
/// column taps as [`tap_runs`], `stride` apart); the first maximum in window order wins ties,
/// and the last NaN wins over everything (as PyTorch).
///
/// One output row at a time, tap by tap across the row: each output still sees its taps in
/// window order (rows, then columns), but consecutive updates belong to different outputs, so
/// they pipeline instead of waiting on one running maximum (at 224 px the per-output loop was
/// 4.7 % of an fp32 training step).
fn max_plane<T: Float + 'static>(
    (x, w): (&[T], usize),
    (ys, xs): (&AxisTaps, &AxisTaps),
    (runs, stride): (&[(Range<usize>, usize)], usize),
    out: &mut [T],
    idx: &mut [i64],
) {
    let ow = (xs.at.len() - 1).max(1);
    for (oy, (out, idx)) in out.chunks_mut(ow).zip(idx.chunks_mut(ow)).enumerate() {
        let rows = ys.of(oy);
        // Every output starts below everything at its first tap (a window of -inf answers -inf
        // there); an empty window stays (-inf, -1).
        out.fill(T::neg_infinity());
        for (ox, i) in idx.iter_mut().enumerate() {
            *i = match (rows.first(), xs.of(ox).first()) {
                (Some(&y0), Some(&x0)) => (y0 * w + x0) as i64,
                _ => -1,
            };
        }
        for &y in rows {
            let row = &x[y * w..][..w];
            for (run, x0) in runs {
                let (o, i) = (&mut out[run.clone()], &mut idx[run.clone()]);
                if stride == 2 {
                    super::strided::max_even(o, i, &row[*x0..], (y * w + x0) as i64);
                    continue;
                }
                let taps = row[*x0..].iter().step_by(stride);
                for ((best, arg), (j, &v)) in o.iter_mut().zip(i.iter_mut()).zip(taps.enumerate()) {
                    // Without branches on the data: a later tap replaces the best when larger
                    // or NaN (PyTorch's `val > maxval || isnan(val)`).
                    let take = v > *best || v.is_nan();
                    *best = if take { v } else { *best };
                    let at = (y * w + x0 + j * stride) as i64;
                    *arg = if take { at } else { *arg };
                }
            }
        }
    }
}

/// Max pooling; returns the output and the flat argmax `h * W + w` of every output.
pub(crate) fn max_pool2d(x: &StorageRef, s: &Pool2dSpec) -> Result<(CpuStorage, CpuStorage)> {
    const OP: &str = "max_pool2d";
    s.validate(OP)?;
    let xh = host(OP, x)?;
    check_len(OP, "input", xh.len(), s.n * s.c * s.h * s.w)?;
    let (plane_in, plane_out) = (s.h * s.w, s.out_h() * s.out_w());
    // Every output and index is written by its plane.
    let mut idx = crate::alloc::for_overwrite::<i64>(s.n * s.c * plane_out)?;
    let c = all_to_compute_ref(OP, &xh)?;
    let ys = AxisTaps::new(
        s.out_h(),
        s.kernel.0,
        s.stride.0,
        s.padding.0,
        s.dilation.0,
        s.h,
    );
    let xs = AxisTaps::new(
        s.out_w(),
        s.kernel.1,
        s.stride.1,
        s.padding.1,
        s.dilation.1,
        s.w,
    );
    let runs = tap_runs(
        s.out_w(),
        s.kernel.1,
        s.stride.1,
        s.padding.1,
        s.dilation.1,
        s.w,
    );
    let out = map_compute_ref!(c, |v: T| {
        let mut out = crate::alloc::for_overwrite::<T>(s.n * s.c * plane_out)?;
        out.par_chunks_mut(plane_out.max(1))
            .zip(idx.par_chunks_mut(plane_out.max(1)))
            .enumerate()
            .for_each(|(p, (o, i))| {
                let x = (&v[p * plane_in..][..plane_in], s.w);
                max_plane(x, (&ys, &xs), (&runs, s.stride.1), o, i)
            });
        out
    });
    Ok((out.into_storage(xh.dtype())?, CpuStorage::I64(idx)))
}

/// Scatters `dy` into the argmax positions of each plane (accumulating on overlaps).
pub(crate) fn max_pool2d_backward(
    dy: &StorageRef,
    indices: &StorageRef,
    s: &Pool2dSpec,
) -> Result<CpuStorage> {
    const OP: &str = "max_pool2d_backward";
    let dyh = host(OP, dy)?;
    let ih = host(OP, indices)?;
    let plane_out = s.out_h() * s.out_w();
    let plane_in = s.h * s.w;
    check_len(OP, "grad_output", dyh.len(), s.n * s.c * plane_out)?;
    let idx = ih.as_slice::<i64>()?;
    check_len(OP, "indices", idx.len(), s.n * s.c * plane_out)?;
    if let Some(bad) = idx.iter().find(|&&i| i < 0 || i as usize >= plane_in) {
        return Err(Error::invalid(
            OP,
            format!("index {bad} outside a {}x{} plane", s.h, s.w),
        ));
    }
    let c = all_to_compute_ref(OP, &dyh)?;
    let out = map_compute_ref!(c, |g: T| {
        let mut dx = crate::alloc::filled(s.n * s.c * plane_in, T::zero())?;
        dx.par_chunks_mut(plane_in.max(1))
            .enumerate()
            .for_each(|(p, d)| {
                let (gp, ip) = (
                    &g[p * plane_out..][..plane_out],
                    &idx[p * plane_out..][..plane_out],
                );
                for (&v, &i) in gp.iter().zip(ip) {
                    d[i as usize] += v;
                }
            });
        dx
    });
    out.into_storage(dyh.dtype())
}

/// The divisor of average-pooling output `(oy, ox)`.
fn avg_divisor(s: &Pool2dSpec, oy: usize, ox: usize) -> usize {
    if s.count_include_pad {
        // Window clipped to the padded extent, as PyTorch does.
        let span = |o: usize, k: usize, st: usize, p: usize, size: usize| {
            let start = o * st;
            let end = (start + k).min(size + 2 * p);
            end - start
        };
        span(oy, s.kernel.0, s.stride.0, s.padding.0, s.h)
            * span(ox, s.kernel.1, s.stride.1, s.padding.1, s.w)
    } else {
        taps(oy, s.kernel.0, s.stride.0, s.padding.0, 1, s.h).count()
            * taps(ox, s.kernel.1, s.stride.1, s.padding.1, 1, s.w).count()
    }
}

fn check_avg(op: &'static str, s: &Pool2dSpec) -> Result<()> {
    s.validate(op)?;
    if s.dilation != (1, 1) {
        return Err(Error::invalid(op, "average pooling takes no dilation"));
    }
    Ok(())
}

/// Average pooling (PyTorch semantics, floor mode).
pub(crate) fn avg_pool2d(x: &StorageRef, s: &Pool2dSpec) -> Result<CpuStorage> {
    const OP: &str = "avg_pool2d";
    check_avg(OP, s)?;
    let xh = host(OP, x)?;
    check_len(OP, "input", xh.len(), s.n * s.c * s.h * s.w)?;
    let (oh, ow) = (s.out_h(), s.out_w());
    let (plane_in, plane_out) = (s.h * s.w, oh * ow);
    let c = all_to_compute_ref(OP, &xh)?;
    let out = map_compute_ref!(c, |v: T| {
        let mut out = crate::alloc::filled(s.n * s.c * plane_out, T::zero())?;
        out.par_chunks_mut(plane_out.max(1))
            .enumerate()
            .for_each(|(p, o)| {
                let x = &v[p * plane_in..][..plane_in];
                for oy in 0..oh {
                    for ox in 0..ow {
                        let ys = window(oy, s.kernel.0, s.stride.0, s.padding.0, s.h);
                        let xs = window(ox, s.kernel.1, s.stride.1, s.padding.1, s.w);
                        let acc = window_sum(x, s.w, ys, xs);
                        let d = count::<T>(avg_divisor(s, oy, ox));
                        o[oy * ow + ox] = acc / d;
                    }
                }
            });
        out
    });
    out.into_storage(xh.dtype())
}

/// Gradient of [`avg_pool2d`].
pub(crate) fn avg_pool2d_backward(dy: &StorageRef, s: &Pool2dSpec) -> Result<CpuStorage> {
    const OP: &str = "avg_pool2d_backward";
    check_avg(OP, s)?;
    let dyh = host(OP, dy)?;
    let (oh, ow) = (s.out_h(), s.out_w());
    let (plane_in, plane_out) = (s.h * s.w, oh * ow);
    check_len(OP, "grad_output", dyh.len(), s.n * s.c * plane_out)?;
    let c = all_to_compute_ref(OP, &dyh)?;
    let out = map_compute_ref!(c, |g: T| {
        let mut dx = crate::alloc::filled(s.n * s.c * plane_in, T::zero())?;
        dx.par_chunks_mut(plane_in.max(1))
            .enumerate()
            .for_each(|(p, d)| {
                let gp = &g[p * plane_out..][..plane_out];
                for oy in 0..oh {
                    for ox in 0..ow {
                        let share = gp[oy * ow + ox] / count::<T>(avg_divisor(s, oy, ox));
                        for y in taps(oy, s.kernel.0, s.stride.0, s.padding.0, 1, s.h) {
                            for xx in taps(ox, s.kernel.1, s.stride.1, s.padding.1, 1, s.w) {
                                d[y * s.w + xx] += share;
                            }
                        }
                    }
                }
            });
        dx
    });
    out.into_storage(dyh.dtype())
}

/// PyTorch's adaptive window along one axis: `floor(i*in/out) .. ceil((i+1)*in/out)`.
fn adaptive_window(i: usize, input: usize, output: usize) -> Range<usize> {
    (i * input / output)..((i + 1) * input).div_ceil(output)
}

fn check_adaptive(op: &'static str, dims: [usize; 4], out: (usize, usize)) -> Result<()> {
    if out.0 == 0 || out.1 == 0 || dims[2] == 0 || dims[3] == 0 {
        return Err(Error::invalid(
            op,
            format!("output size {out:?} and input {dims:?} must have positive spatial sizes"),
        ));
    }
    Ok(())
}

/// Adaptive average pooling `[n, c, h, w] -> [n, c, oh, ow]`.
pub(crate) fn adaptive_avg_pool2d(
    x: &StorageRef,
    dims: [usize; 4],
    out: (usize, usize),
) -> Result<CpuStorage> {
    const OP: &str = "adaptive_avg_pool2d";
    check_adaptive(OP, dims, out)?;
    let [n, c, h, w] = dims;
    let xh = host(OP, x)?;
    check_len(OP, "input", xh.len(), n * c * h * w)?;
    let (plane_in, plane_out) = (h * w, out.0 * out.1);
    let comp = all_to_compute_ref(OP, &xh)?;
    let res = map_compute_ref!(comp, |v: T| {
        let mut o = crate::alloc::filled(n * c * plane_out, T::zero())?;
        o.par_chunks_mut(plane_out).enumerate().for_each(|(p, op)| {
            let x = &v[p * plane_in..][..plane_in];
            for oy in 0..out.0 {
                let ys = adaptive_window(oy, h, out.0);
                for ox in 0..out.1 {
                    let xs = adaptive_window(ox, w, out.1);
                    let cnt = count::<T>(ys.len() * xs.len());
                    let acc = window_sum(x, w, ys.clone(), xs.clone());
                    op[oy * out.1 + ox] = acc / cnt;
                }
            }
        });
        o
    });
    res.into_storage(xh.dtype())
}

/// Gradient of [`adaptive_avg_pool2d`].
pub(crate) fn adaptive_avg_pool2d_backward(
    dy: &StorageRef,
    dims: [usize; 4],
    out: (usize, usize),
) -> Result<CpuStorage> {
    const OP: &str = "adaptive_avg_pool2d_backward";
    check_adaptive(OP, dims, out)?;
    let [n, c, h, w] = dims;
    let dyh = host(OP, dy)?;
    let (plane_in, plane_out) = (h * w, out.0 * out.1);
    check_len(OP, "grad_output", dyh.len(), n * c * plane_out)?;
    let comp = all_to_compute_ref(OP, &dyh)?;
    let res = map_compute_ref!(comp, |g: T| {
        let mut dx = crate::alloc::filled(n * c * plane_in, T::zero())?;
        dx.par_chunks_mut(plane_in).enumerate().for_each(|(p, d)| {
            let gp = &g[p * plane_out..][..plane_out];
            for oy in 0..out.0 {
                let ys = adaptive_window(oy, h, out.0);
                for ox in 0..out.1 {
                    let xs = adaptive_window(ox, w, out.1);
                    let share = gp[oy * out.1 + ox] / count::<T>(ys.len() * xs.len());
                    for y in ys.clone() {
                        for xx in xs.clone() {
                            d[y * w + xx] += share;
                        }
                    }
                }
            }
        });
        dx
    });
    res.into_storage(dyh.dtype())
}

/// The CPU kernels pool NCHW planes; channels-last calls are gathered into NCHW and
/// scattered back (the argmax indices stay in NCHW output order, private to this backend).
impl crate::backend::PoolOps for super::CpuBackend {
    fn max_pool2d(&self, x: &StorageRef, spec: &Pool2dSpec) -> Result<(StorageRef, StorageRef)> {
        let x = to_nchw("max_pool2d", x, spec.input_dims(), spec.format)?;
        let (y, i) = max_pool2d(&x, spec)?;
        Ok((
            from_nchw(wrap(y), spec.output_dims(), spec.format)?,
            wrap(i),
        ))
    }

    fn max_pool2d_backward(
        &self,
        dy: &StorageRef,
        indices: &StorageRef,
        spec: &Pool2dSpec,
    ) -> Result<StorageRef> {
        let dy = to_nchw("max_pool2d_backward", dy, spec.output_dims(), spec.format)?;
        let dx = wrap(max_pool2d_backward(&dy, indices, spec)?);
        from_nchw(dx, spec.input_dims(), spec.format)
    }

    fn avg_pool2d(&self, x: &StorageRef, spec: &Pool2dSpec) -> Result<StorageRef> {
        let x = to_nchw("avg_pool2d", x, spec.input_dims(), spec.format)?;
        from_nchw(wrap(avg_pool2d(&x, spec)?), spec.output_dims(), spec.format)
    }

    fn avg_pool2d_backward(&self, dy: &StorageRef, spec: &Pool2dSpec) -> Result<StorageRef> {
        let dy = to_nchw("avg_pool2d_backward", dy, spec.output_dims(), spec.format)?;
        let dx = wrap(avg_pool2d_backward(&dy, spec)?);
        from_nchw(dx, spec.input_dims(), spec.format)
    }

    fn adaptive_avg_pool2d(
        &self,
        x: &StorageRef,
        dims: [usize; 4],
        out: (usize, usize),
        format: MemoryFormat,
    ) -> Result<StorageRef> {
        let x = to_nchw("adaptive_avg_pool2d", x, dims, format)?;
        let y = wrap(adaptive_avg_pool2d(&x, dims, out)?);
        from_nchw(y, [dims[0], dims[1], out.0, out.1], format)
    }

    fn adaptive_avg_pool2d_backward(
        &self,
        dy: &StorageRef,
        dims: [usize; 4],
        out: (usize, usize),
        format: MemoryFormat,
    ) -> Result<StorageRef> {
        let odims = [dims[0], dims[1], out.0, out.1];
        let dy = to_nchw("adaptive_avg_pool2d_backward", dy, odims, format)?;
        from_nchw(
            wrap(adaptive_avg_pool2d_backward(&dy, dims, out)?),
            dims,
            format,
        )
    }
}
