//! CPU 2-D convolution (NCHW input, OIHW weight) by im2col + GEMM per image and group,
//! parallel over the batch. Computes in f32 (f64 for F64) and rounds once at the output, into
//! `spec.out_dtype`. Channels-last operands are gathered into NCHW order on the way in and
//! the result scattered back to NHWC on the way out (two extra passes over memory: the CPU
//! accepts both formats; a native NHWC path is CPU-speed work).

use super::compute::{gather_same, host, nchw_to_format_gather, to_compute, Compute};
use super::matmul::gemm_strided;
use super::wrap;
use crate::backend::Conv2dSpec;
use crate::{CpuStorage, DType, Error, Layout, Result, StorageRef};
use num_traits::Float;
use rayon::prelude::*;

/// Sizes derived from a spec: per-group channels, patch length `K` and output pixels `P`.
#[derive(Clone, Copy)]
struct Geometry {
    s: Conv2dSpec,
    cin_g: usize,
    cout_g: usize,
    k: usize,
    p: usize,
    oh: usize,
    ow: usize,
}

impl Geometry {
    fn new(s: &Conv2dSpec) -> Self {
        let (oh, ow) = (s.out_h(), s.out_w());
        let cin_g = s.c_in / s.groups;
        Geometry {
            s: *s,
            cin_g,
            cout_g: s.c_out / s.groups,
            k: cin_g * s.kh * s.kw,
            p: oh * ow,
            oh,
            ow,
        }
    }

    /// Input coordinate of output `o` and kernel tap `t` along one axis, if inside the image.
    fn src(
        o: usize,
        t: usize,
        stride: usize,
        pad: usize,
        dil: usize,
        size: usize,
    ) -> Option<usize> {
        (o * stride + t * dil)
            .checked_sub(pad)
            .filter(|&i| i < size)
    }

    /// Fills `col [K, P]` from channels of group `g` of one image `x [c_in, h, w]`.
    fn im2col<T: Float>(&self, x: &[T], g: usize, col: &mut [T]) {
        let s = &self.s;
        for ci in 0..self.cin_g {
            let plane = &x[(g * self.cin_g + ci) * s.h * s.w..][..s.h * s.w];
            for ki in 0..s.kh {
                for kj in 0..s.kw {
                    let row = (ci * s.kh + ki) * s.kw + kj;
                    let dst = &mut col[row * self.p..][..self.p];
                    for oy in 0..self.oh {
                        let iy = Self::src(oy, ki, s.stride.0, s.padding.0, s.dilation.0, s.h);
                        for ox in 0..self.ow {
                            let ix = Self::src(ox, kj, s.stride.1, s.padding.1, s.dilation.1, s.w);
                            dst[oy * self.ow + ox] = match (iy, ix) {
                                (Some(y), Some(x)) => plane[y * s.w + x],
                                _ => T::zero(),
                            };
                        }
                    }
                }
            }
        }
    }

    /// Adds `col [K, P]` back into channels of group `g` of one image gradient `dx`.
    fn col2im<T: Float>(&self, col: &[T], g: usize, dx: &mut [T]) {
        let s = &self.s;
        for ci in 0..self.cin_g {
            let plane = &mut dx[(g * self.cin_g + ci) * s.h * s.w..][..s.h * s.w];
            for ki in 0..s.kh {
                for kj in 0..s.kw {
                    let row = (ci * s.kh + ki) * s.kw + kj;
                    let src = &col[row * self.p..][..self.p];
                    for oy in 0..self.oh {
                        let Some(y) = Self::src(oy, ki, s.stride.0, s.padding.0, s.dilation.0, s.h)
                        else {
                            continue;
                        };
                        for ox in 0..self.ow {
                            if let Some(x) =
                                Self::src(ox, kj, s.stride.1, s.padding.1, s.dilation.1, s.w)
                            {
                                plane[y * s.w + x] = plane[y * s.w + x] + src[oy * self.ow + ox];
                            }
                        }
                    }
                }
            }
        }
    }
}

fn forward<T: Float + Send + Sync + 'static>(x: &[T], w: &[T], g: &Geometry) -> Result<Vec<T>> {
    let s = &g.s;
    let img_in = s.c_in * s.h * s.w;
    let img_out = s.c_out * g.p;
    let mut out = crate::alloc::filled(s.n * img_out, T::zero())?;
    if img_out == 0 {
        return Ok(out);
    }
    let serial = s.n < rayon::current_num_threads();
    let run = |(img, dst): (usize, &mut [T])| {
        let mut col = crate::alloc::filled(g.k * g.p, T::zero())?;
        for grp in 0..s.groups {
            g.im2col(&x[img * img_in..][..img_in], grp, &mut col);
            gemm_strided(
                (g.cout_g, g.p, g.k),
                &mut dst[grp * g.cout_g * g.p..],
                &w[grp * g.cout_g * g.k..],
                (g.k, 1),
                &col,
                (g.p, 1),
                false,
                serial,
            );
        }
        Ok(())
    };
    if serial {
        out.chunks_mut(img_out).enumerate().try_for_each(run)?;
    } else {
        out.par_chunks_mut(img_out).enumerate().try_for_each(run)?;
    }
    Ok(out)
}

fn backward_input<T: Float + Send + Sync + 'static>(
    dy: &[T],
    w: &[T],
    g: &Geometry,
) -> Result<Vec<T>> {
    let s = &g.s;
    let img_in = s.c_in * s.h * s.w;
    let img_out = s.c_out * g.p;
    let mut dx = crate::alloc::filled(s.n * img_in, T::zero())?;
    if img_in == 0 {
        // An empty input (H or W of 0 under padding) has an empty gradient.
        return Ok(dx);
    }
    let serial = s.n < rayon::current_num_threads();
    let run = |(img, dst): (usize, &mut [T])| {
        let mut col = crate::alloc::filled(g.k * g.p, T::zero())?;
        for grp in 0..s.groups {
            // dcol [K, P] = W_g^T [K, cout_g] · dy_g [cout_g, P]
            gemm_strided(
                (g.k, g.p, g.cout_g),
                &mut col,
                &w[grp * g.cout_g * g.k..],
                (1, g.k),
                &dy[img * img_out + grp * g.cout_g * g.p..],
                (g.p, 1),
                false,
                serial,
            );
            g.col2im(&col, grp, dst);
        }
        Ok(())
    };
    if serial {
        dx.chunks_mut(img_in).enumerate().try_for_each(run)?;
    } else {
        dx.par_chunks_mut(img_in).enumerate().try_for_each(run)?;
    }
    Ok(dx)
}

fn backward_weight<T: Float + Send + Sync + 'static>(
    x: &[T],
    dy: &[T],
    g: &Geometry,
) -> Result<Vec<T>> {
    let s = &g.s;
    let img_in = s.c_in * s.h * s.w;
    let img_out = s.c_out * g.p;
    let wlen = s.c_out * g.k;
    let serial = s.n < rayon::current_num_threads();
    let accumulate_image = |acc: Result<Vec<T>>, img: usize| {
        let mut acc = acc?;
        let mut col = crate::alloc::filled(g.k * g.p, T::zero())?;
        for grp in 0..s.groups {
            g.im2col(&x[img * img_in..][..img_in], grp, &mut col);
            // dW_g [cout_g, K] += dy_g [cout_g, P] · col^T [P, K]
            gemm_strided(
                (g.cout_g, g.k, g.p),
                &mut acc[grp * g.cout_g * g.k..],
                &dy[img * img_out + grp * g.cout_g * g.p..],
                (g.p, 1),
                &col,
                (1, g.p),
                true,
                serial,
            );
        }
        Ok(acc)
    };
    let zeros = || crate::alloc::filled(wlen, T::zero());
    if serial {
        (0..s.n).fold(zeros(), accumulate_image)
    } else {
        (0..s.n)
            .into_par_iter()
            .fold(zeros, accumulate_image)
            // Every fold result has `wlen` elements; the identity is empty (no allocation).
            .try_reduce(Vec::new, |mut a, b| {
                if a.is_empty() {
                    return Ok(b);
                }
                a.iter_mut().zip(b).for_each(|(x, y)| *x = *x + y);
                Ok(a)
            })
    }
}

fn check_len(
    op: &'static str,
    what: &str,
    got: usize,
    want: usize,
    spec: &Conv2dSpec,
) -> Result<()> {
    if got != want {
        return Err(Error::shape(
            op,
            format!("{what} has {got} elements, expected {want} for {spec:?}"),
        ));
    }
    Ok(())
}

/// Both operands (one dtype, dense in `spec.format`) in their compute type, in logical
/// (row-major NCHW / KCRS) order; and the output dtype.
fn pair(
    op: &'static str,
    (a, a_dims): (&StorageRef, [usize; 4]),
    (b, b_dims): (&StorageRef, [usize; 4]),
    spec: &Conv2dSpec,
) -> Result<(Compute, Compute, DType)> {
    let (ha, hb) = (host(op, a)?, host(op, b)?);
    if ha.dtype() != hb.dtype() {
        return Err(Error::dtype(
            op,
            format!("{} and {}", ha.dtype(), hb.dtype()),
        ));
    }
    let view = |dims: [usize; 4]| {
        Layout::dense(dims, spec.format).unwrap_or_else(|| Layout::contiguous(dims))
    };
    Ok((
        to_compute(op, &ha, &view(a_dims))?,
        to_compute(op, &hb, &view(b_dims))?,
        spec.out_dtype.unwrap_or(ha.dtype()),
    ))
}

/// Rounds a result in logical order into `dtype`, stored in `spec.format`.
fn output(c: Compute, dims: [usize; 4], dtype: DType, spec: &Conv2dSpec) -> Result<CpuStorage> {
    let s = c.into_storage(dtype)?;
    match nchw_to_format_gather(dims, spec.format) {
        Some(l) => gather_same(&s, &l),
        None => Ok(s),
    }
}

macro_rules! dispatch {
    ($op:expr, $a:expr, $b:expr, $f:ident, $g:expr) => {
        match ($a, $b) {
            (Compute::F32(a), Compute::F32(b)) => Compute::F32($f(&a, &b, $g)?),
            (Compute::F64(a), Compute::F64(b)) => Compute::F64($f(&a, &b, $g)?),
            _ => return Err(Error::dtype($op, "mixed compute types")),
        }
    };
}

/// Forward convolution of `x [n, c_in, h, w]` and `w [c_out, c_in/groups, kh, kw]`.
pub(crate) fn conv2d(x: &StorageRef, w: &StorageRef, spec: &Conv2dSpec) -> Result<CpuStorage> {
    const OP: &str = "conv2d";
    spec.validate(OP)?;
    let g = Geometry::new(spec);
    check_len(
        OP,
        "input",
        x.len(),
        spec.n * spec.c_in * spec.h * spec.w,
        spec,
    )?;
    check_len(OP, "weight", w.len(), spec.c_out * g.k, spec)?;
    let (a, b, dtype) = pair(OP, (x, spec.input_dims()), (w, spec.weight_dims()), spec)?;
    let y = dispatch!(OP, a, b, forward, &g);
    output(y, spec.output_dims(), dtype, spec)
}

/// Input gradient of [`conv2d`] from `dy [n, c_out, oh, ow]`.
pub(crate) fn conv2d_backward_input(
    dy: &StorageRef,
    w: &StorageRef,
    spec: &Conv2dSpec,
) -> Result<CpuStorage> {
    const OP: &str = "conv2d_backward_input";
    spec.validate(OP)?;
    let g = Geometry::new(spec);
    check_len(OP, "grad_output", dy.len(), spec.n * spec.c_out * g.p, spec)?;
    check_len(OP, "weight", w.len(), spec.c_out * g.k, spec)?;
    let (a, b, dtype) = pair(OP, (dy, spec.output_dims()), (w, spec.weight_dims()), spec)?;
    let dx = dispatch!(OP, a, b, backward_input, &g);
    output(dx, spec.input_dims(), dtype, spec)
}

/// Weight gradient of [`conv2d`] from the input `x` and `dy`.
pub(crate) fn conv2d_backward_weight(
    x: &StorageRef,
    dy: &StorageRef,
    spec: &Conv2dSpec,
) -> Result<CpuStorage> {
    const OP: &str = "conv2d_backward_weight";
    spec.validate(OP)?;
    let g = Geometry::new(spec);
    check_len(
        OP,
        "input",
        x.len(),
        spec.n * spec.c_in * spec.h * spec.w,
        spec,
    )?;
    check_len(OP, "grad_output", dy.len(), spec.n * spec.c_out * g.p, spec)?;
    let (a, b, dtype) = pair(OP, (x, spec.input_dims()), (dy, spec.output_dims()), spec)?;
    let dw = dispatch!(OP, a, b, backward_weight, &g);
    output(dw, spec.weight_dims(), dtype, spec)
}

impl crate::backend::ConvOps for super::CpuBackend {
    fn conv2d(&self, x: &StorageRef, w: &StorageRef, spec: &Conv2dSpec) -> Result<StorageRef> {
        Ok(wrap(conv2d(x, w, spec)?))
    }

    fn conv2d_backward_input(
        &self,
        dy: &StorageRef,
        w: &StorageRef,
        spec: &Conv2dSpec,
    ) -> Result<StorageRef> {
        Ok(wrap(conv2d_backward_input(dy, w, spec)?))
    }

    fn conv2d_backward_weight(
        &self,
        x: &StorageRef,
        dy: &StorageRef,
        spec: &Conv2dSpec,
    ) -> Result<StorageRef> {
        Ok(wrap(conv2d_backward_weight(x, dy, spec)?))
    }
}
