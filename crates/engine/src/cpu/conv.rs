//! CPU 2-D convolution (NCHW input, OIHW weight) by im2col + GEMM per group over chunks of
//! images (as many images per GEMM as make its N = images × pixels ≥ 256 wide), parallel over
//! the chunks (or inside the GEMMs when there are fewer chunks than threads). Computes in f32
//! (f64 for F64) and rounds once at the output, into `spec.out_dtype`. Kernel taps that read
//! only padding for every output (a 3 × 3 kernel on a 1 × 1 map: 8 of its 9 taps) are left
//! out of the GEMMs' K ([`Geometry::taps`]): their products are zeros, so the sums are the
//! same. Channels-last operands are gathered into NCHW order on the way in and
//! the result scattered back to NHWC on the way out (two extra passes over memory: the CPU
//! accepts both formats; a native NHWC path is CPU-speed work).

use super::amx_pack::RoundedBf16;
use super::compute::{
    gather_same, host, nchw_to_format_gather, to_compute_ref, Compute, ComputeRef,
};
use super::convert::rounded_through;
use super::matmul::span;
use super::matmul::{gemm_f16, gemm_strided};
use super::sgemm_pack::RoundedF16;
use super::wrap;
use crate::backend::Conv2dSpec;
use crate::{CpuStorage, DType, Error, Layout, Result, StorageRef};
use bytemuck::cast_slice as cast;
use half::{bf16, f16};
use num_traits::Float;
use rayon::prelude::*;
use std::borrow::Cow;
use std::ops::Range;

/// The outputs `ox` of one kernel column whose input column lies inside the image, and the
/// input column of the first ([`Geometry::valid_cols`]).
type ColumnRun = (Range<usize>, usize);

/// Sizes derived from a spec: per-group channels, the kernel taps that read the image
/// (`taps`), patch length `K` over those taps and output pixels `P`.
#[derive(Clone)]
struct Geometry {
    s: Conv2dSpec,
    cin_g: usize,
    cout_g: usize,
    /// The kernel rows and columns `(ki, kj)` some output reads inside the image through: a
    /// tap outside this box reads padding for every output (a 3 × 3 kernel on a 1 × 1 map
    /// reads the image through its centre only), so its im2col rows are zero and its GEMM
    /// work is skipped — the weight's columns of the box are gathered ([`Geometry::taps_of`])
    /// and the weight gradient is zero outside it ([`Geometry::spread`]). The whole kernel
    /// when every tap reads the image somewhere, or when none does.
    taps: [Range<usize>; 2],
    /// `cin_g ·` the box's taps.
    k: usize,
    p: usize,
    ow: usize,
}

impl Geometry {
    fn new(s: &Conv2dSpec) -> Self {
        let (oh, ow) = (s.out_h(), s.out_w());
        let cin_g = s.c_in / s.groups;
        let mut g = Geometry {
            s: *s,
            cin_g,
            cout_g: s.c_out / s.groups,
            taps: [0..s.kh, 0..s.kw],
            k: cin_g * s.kh * s.kw,
            p: oh * ow,
            ow,
        };
        let box_of = |axis: usize, n: usize| {
            let used: Vec<usize> = (0..n)
                .filter(|&t| !g.valid_outputs(axis, t).0.is_empty())
                .collect();
            Some(*used.first()?..*used.last()? + 1)
        };
        if let (Some(rows), Some(cols)) = (box_of(0, s.kh), box_of(1, s.kw)) {
            g.k = cin_g * rows.len() * cols.len();
            g.taps = [rows, cols];
        }
        g
    }

    /// Whether some kernel taps are skipped (the box is smaller than the kernel).
    fn skips_taps(&self) -> bool {
        self.k < self.k_full()
    }

    /// The box's tap count (im2col rows per input channel).
    fn box_len(&self) -> usize {
        self.taps[0].len() * self.taps[1].len()
    }

    /// The weight's patch length over the whole kernel: `cin_g · kh · kw`.
    fn k_full(&self) -> usize {
        self.cin_g * self.s.kh * self.s.kw
    }

    /// The taps of the box in im2col row order: `(ki, kj, row within a channel's block)`.
    fn box_taps(&self) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        let [rows, cols] = self.taps.clone();
        let tw = cols.len();
        rows.enumerate().flat_map(move |(r, ki)| {
            cols.clone()
                .enumerate()
                .map(move |(c, kj)| (ki, kj, r * tw + c))
        })
    }

    /// The box's columns of a weight `[c_out, cin_g, kh, kw]`, as `[c_out, K]` (the weight
    /// itself, borrowed, when no tap is skipped); in parallel over output channels.
    fn taps_of<'w, W: bytemuck::Pod + Send + Sync>(&self, w: &'w [W]) -> Result<Cow<'w, [W]>> {
        if !self.skips_taps() {
            return Ok(Cow::Borrowed(w));
        }
        let (kk, at) = self.box_offsets();
        // (Every element written: each row gets every tap of the box.)
        let mut out = crate::alloc::for_overwrite::<W>(self.s.c_out * self.k)?;
        let rows = out
            .par_chunks_mut(self.k.max(1))
            .zip(w.par_chunks(self.k_full().max(1)));
        // (Per output channel, tap by tap: a strided copy each, the row in L1; a loop per
        // channel and tap cost more than the memory.)
        rows.for_each(|(o, full)| {
            for (r, &t) in at.iter().enumerate() {
                let to = o[r..].iter_mut().step_by(at.len());
                for (v, &x) in to.zip(full[t..].iter().step_by(kk)) {
                    *v = x;
                }
            }
        });
        Ok(Cow::Owned(out))
    }

    /// A weight gradient over the box's columns `[c_out, K]` spread over the whole kernel
    /// `[c_out, cin_g, kh, kw]`, zero at the skipped taps (returned as is when none is); in
    /// parallel over output channels.
    fn spread<T: bytemuck::Pod + Send + Sync>(&self, dw: Vec<T>) -> Result<Vec<T>> {
        if !self.skips_taps() {
            return Ok(dw);
        }
        let (kk, at) = self.box_offsets();
        // (Every element written: zeros, then the box's taps.)
        let mut out = crate::alloc::for_overwrite::<T>(self.s.c_out * self.k_full())?;
        let rows = out
            .par_chunks_mut(self.k_full().max(1))
            .zip(dw.par_chunks(self.k.max(1)));
        rows.for_each(|(full, o)| {
            full.fill(T::zeroed());
            for (r, &t) in at.iter().enumerate() {
                let from = o[r..].iter().step_by(at.len());
                for (v, &x) in full[t..].iter_mut().step_by(kk).zip(from) {
                    *v = x;
                }
            }
        });
        crate::alloc::recycle(dw);
        Ok(out)
    }

    /// The kernel's tap count `kh · kw` and the offsets `ki · kw + kj` of the box's taps
    /// within one channel's `kh × kw` block, in im2col row order.
    fn box_offsets(&self) -> (usize, Vec<usize>) {
        let kw = self.s.kw;
        let at = self.box_taps().map(|(ki, kj, _)| ki * kw + kj).collect();
        (self.s.kh * kw, at)
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
        // (An overflow lies past any image: outside.)
        o.checked_mul(stride)?
            .checked_add(t.checked_mul(dil)?)?
            .checked_sub(pad)
            .filter(|&i| i < size)
    }

    /// The outputs `ox` whose input column `ox·stride + kj·dilation − padding` lies inside
    /// `0..w`: a contiguous range, and that first input column.
    fn valid_cols(&self, kj: usize) -> (std::ops::Range<usize>, usize) {
        self.valid_outputs(1, kj)
    }

    /// [`Self::valid_cols`] along `axis` (0: rows, tap `ki`; 1: columns, tap `kj`).
    fn valid_outputs(&self, axis: usize, t: usize) -> (std::ops::Range<usize>, usize) {
        let s = &self.s;
        let terms = if axis == 0 {
            [
                s.stride.0,
                s.padding.0,
                s.h,
                t,
                s.dilation.0,
                self.p / self.ow.max(1),
            ]
        } else {
            [s.stride.1, s.padding.1, s.w, t, s.dilation.1, self.ow]
        };
        // Real layers: every term below 2^20, so no intermediate reaches 2^64 and the run
        // costs 64-bit divisions. Otherwise u128 (a huge stride or padding exceeds usize,
        // found by the fuzz harness); every result that is used lies inside the image.
        let (lo, hi, first) = if terms.iter().all(|&t| t < 1 << 20) {
            let [st, pad, w, kj, dil, ow] = terms.map(|t| t as u64);
            Self::run_of(st, pad, w, kj * dil, ow)
        } else {
            let [st, pad, w, kj, dil, ow] = terms.map(|t| t as u128);
            Self::run_of(st, pad, w, kj * dil, ow)
        };
        (lo..hi, first)
    }

    /// [`Self::valid_cols`] of every kernel column `kj` (once per im2col/col2im call rather than
    /// per channel and tap: the divisions were 1-2 % of a 64-px training step).
    fn column_runs(&self) -> Vec<ColumnRun> {
        (0..self.s.kw).map(|kj| self.valid_cols(kj)).collect()
    }

    /// Where output rows are narrow (at most [`TABLE_MAX_OW`] pixels; twice that where the
    /// row copies go one element at a time — strides above 2, and stride 2 without AVX-512;
    /// half of it for stride-1 rows as wide as the input's), im2col and col2im go through a
    /// table instead of per-row copies, whose bookkeeping there costs more than the data: for
    /// box row `r` and output pixel `p` of one image's rows `oys`, entry `r · px + p` is the
    /// plane offset read (`y · w + x`), or [`PAD`] where it reads padding. `None` for wider
    /// rows, or a table longer than [`TABLE_MAX`].
    ///
    /// Measured per element on Zen 3 (one channel, rows vs table; im2col, col2im): 3 × 3 "same"
    /// on 16 × 16 0.29 vs 0.47 and 0.37 vs 0.86 ns (rows kept), on 8 × 8 0.77 vs 0.43 and
    /// 0.82 vs 0.60, on 2 × 2 4.8 vs 1.1 and 2.4 vs 1.5; stride 2 to 8 × 8 1.39 vs 0.42 and
    /// 1.16 vs 0.72; the 7 × 7 stem to 16 × 16 1.12 vs 0.52 and 0.95 vs 0.61, to 32 × 32 0.86
    /// vs 0.49 and 0.81 vs 0.61.
    fn gather_table(&self, oys: &Range<usize>) -> Option<Vec<u32>> {
        let s = &self.s;
        // (Stride-1 rows as wide as the input's take one shifted copy per tap, `shifted_rows`:
        // the table wins there only on the narrowest rows.)
        let shifted = s.stride == (1, 1) && self.ow == s.w;
        // (Strided rows copy one element at a time — stride 2 through AVX-512 permutes where
        // the CPU has them — and there the table wins on twice as wide rows.)
        let st = s.stride.1;
        let one_by_one = st > 2 || (st == 2 && !super::convert::avx512());
        let widest = match (shifted, one_by_one) {
            (true, _) => TABLE_MAX_OW / 2,
            (false, true) => TABLE_MAX_OW * 2,
            (false, false) => TABLE_MAX_OW,
        };
        let len = self.box_len().checked_mul(oys.len() * self.ow)?;
        let addressable = s.h.checked_mul(s.w).is_some_and(|n| n < PAD as usize);
        if self.ow > widest || len > TABLE_MAX || !addressable {
            return None;
        }
        let mut t = Vec::with_capacity(len);
        for (ki, kj, _) in self.box_taps() {
            // The input column of each output column (`PAD` outside), then per output row
            // those shifted by the input row (all `PAD` outside). (Below `PAD`: `h · w` is,
            // checked above, and a valid entry plus `y · w` stays below it.)
            let xs: Vec<u32> = (0..self.ow)
                .map(|ox| Self::src(ox, kj, s.stride.1, s.padding.1, s.dilation.1, s.w))
                .map(|x| x.map_or(PAD, |x| x as u32))
                .collect();
            for oy in oys.clone() {
                match Self::src(oy, ki, s.stride.0, s.padding.0, s.dilation.0, s.h) {
                    Some(y) => {
                        let row = (y * s.w) as u32;
                        t.extend(xs.iter().map(|&x| if x == PAD { PAD } else { row + x }));
                    }
                    None => t.resize(t.len() + self.ow, PAD),
                }
            }
        }
        Some(t)
    }

    /// [`Self::gather_table`] of each block of output rows (built once per pass over a chunk,
    /// not per group: a depthwise convolution has as many groups as channels).
    fn gather_tables(&self, blocks: &[Range<usize>]) -> Vec<Option<Vec<u32>>> {
        blocks.iter().map(|oys| self.gather_table(oys)).collect()
    }

    /// [`Self::valid_cols`] in an integer type wide enough for `w + pad` and `ow·st + tap`:
    /// the run `lo..hi` of outputs and the input column of `lo` (as usize, each ≤ `w` or `ow`).
    fn run_of<U: num_traits::PrimInt + TryInto<usize>>(
        st: U,
        pad: U,
        w: U,
        tap: U,
        ow: U,
    ) -> (usize, usize, usize) {
        let one = U::one();
        let skip = pad.saturating_sub(tap);
        let lo = skip / st
            + if skip % st > U::zero() {
                one
            } else {
                U::zero()
            };
        let hi = match (w + pad).checked_sub(&(tap + one)) {
            Some(last) => (last / st + one).min(ow),
            None => U::zero(),
        };
        let lo = lo.min(hi);
        let first = (lo * st + tap).saturating_sub(pad).min(w);
        let small = |v: U| v.try_into().unwrap_or(usize::MAX);
        (small(lo), small(hi), small(first))
    }

    /// Fills the box's rows of `col` (`ld` apart, `oys.len()·ow` long) that belong to one
    /// input channel `plane [h, w]` of one image, for the output rows `oys`: through `table`
    /// ([`Self::gather_table`] of `oys`) when given, else per output row, zeros left and right
    /// of the valid run and the run itself copied (contiguous for stride 1).
    fn im2col_channel<T: bytemuck::Pod>(
        &self,
        plane: &[T],
        col: &mut [T],
        (ld, oys): Rows,
        (runs, table): (&[ColumnRun], Option<&[u32]>),
    ) {
        let px = oys.len() * self.ow;
        if let Some(t) = table {
            for (r, at) in t.chunks_exact(px.max(1)).enumerate() {
                for (d, &i) in col[r * ld..][..px].iter_mut().zip(at) {
                    // (`PAD` lies past the plane: a zero.)
                    *d = plane.get(i as usize).copied().unwrap_or_else(T::zeroed);
                }
            }
            return;
        }
        let s = &self.s;
        let st = s.stride.1;
        for (ki, kj, r) in self.box_taps() {
            let dst = &mut col[r * ld..][..px];
            let (run, ix0) = runs[kj].clone();
            if s.stride == (1, 1) && self.ow == s.w && !run.is_empty() {
                self.shifted_rows(plane, dst, (ki, kj), (oys.clone(), run));
                continue;
            }
            for (oy, out) in oys.clone().zip(dst.chunks_exact_mut(self.ow.max(1))) {
                let iy = Self::src(oy, ki, s.stride.0, s.padding.0, s.dilation.0, s.h);
                let Some(iy) = iy.filter(|_| !run.is_empty()) else {
                    out.fill(T::zeroed());
                    continue;
                };
                out[..run.start].fill(T::zeroed());
                out[run.end..].fill(T::zeroed());
                let src = &plane[iy * s.w + ix0..];
                let out = &mut out[run.clone()];
                if st == 1 {
                    out.copy_from_slice(&src[..out.len()]);
                } else if st == 2 {
                    super::strided::copy_even(out, src);
                } else {
                    for (o, v) in out.iter_mut().zip(src.iter().step_by(st)) {
                        *o = *v;
                    }
                }
            }
        }
    }

    /// One tap `(ki, kj)`'s row of `col` for the output rows `oys` of a stride-1 convolution
    /// whose output rows are as wide as the input's (`ow == w`, as with "same" padding): output
    /// `(oy, ox)` reads input `(oy + ki·dil − pad, ox + kj·dil − pad)`, so the output rows
    /// whose input row exists are one contiguous block of the plane shifted by a constant —
    /// one copy for all of them (on 64-px ResNet layers the per-row copies and fills were
    /// `memcpy`/`memset` calls of 1–32 elements) — after which the columns outside `run`
    /// (at most the padding, wrapped in from the neighbouring rows) are zeroed, and rows with
    /// no input row filled with zeros.
    fn shifted_rows<T: bytemuck::Pod>(
        &self,
        plane: &[T],
        dst: &mut [T],
        (ki, kj): (usize, usize),
        (oys, run): (Range<usize>, Range<usize>),
    ) {
        // (In i128: huge padding or dilation must not overflow; every index used lies inside
        // the plane or `dst`.)
        let s = &self.s;
        let (w, ow) = (s.w as i128, self.ow);
        // Output row `oy` reads input row `oy + down`: those inside `0..h` are one range.
        let down = (ki * s.dilation.0) as i128 - s.padding.0 as i128;
        let clip = |oy: i128| oy.clamp(oys.start as i128, oys.end as i128) as usize;
        let valid = clip(-down)..clip(s.h as i128 - down).max(clip(-down));
        let (lo, hi) = (valid.start - oys.start, valid.end - oys.start);
        dst[..lo * ow].fill(T::zeroed());
        dst[hi * ow..].fill(T::zeroed());
        if valid.is_empty() {
            return;
        }
        let iy0 = valid.start as i128 + down;
        let shift = (kj * s.dilation.1) as i128 - s.padding.1 as i128;
        // dst[lo·ow + j] = plane[base + j], for the j whose source lies inside the plane (the
        // others are outside `run`, zeroed below).
        let base = iy0 * w + shift;
        let block = &mut dst[lo * ow..hi * ow];
        let j0 = (-base).clamp(0, block.len() as i128) as usize;
        let j1 = (plane.len() as i128 - base).clamp(j0 as i128, block.len() as i128) as usize;
        block[j0..j1].copy_from_slice(&plane[(base + j0 as i128) as usize..][..j1 - j0]);
        for row in block.chunks_exact_mut(ow) {
            for v in &mut row[..run.start] {
                *v = T::zeroed();
            }
            for v in &mut row[run.end..] {
                *v = T::zeroed();
            }
        }
    }

    /// Adds the box's rows of `col` (`ld` apart, output rows `oys`) of one input channel back
    /// into that channel's gradient `plane [h, w]` of one image (the valid run of each output
    /// row only), through `table` ([`Self::gather_table`] of `oys`) when given.
    fn col2im_channel<T: Float>(
        &self,
        col: &[T],
        (ld, oys): Rows,
        (runs, table): (&[ColumnRun], Option<&[u32]>),
        plane: &mut [T],
    ) {
        let px = oys.len() * self.ow;
        if let Some(t) = table {
            // The same sums in the same order as the per-row path: tap by tap, and within a
            // tap each plane element at most once.
            for (r, at) in t.chunks_exact(px.max(1)).enumerate() {
                for (&v, &i) in col[r * ld..][..px].iter().zip(at) {
                    if let Some(d) = plane.get_mut(i as usize) {
                        *d = *d + v;
                    }
                }
            }
            return;
        }
        let s = &self.s;
        let st = s.stride.1;
        for (ki, kj, r) in self.box_taps() {
            let src = &col[r * ld..][..px];
            let (run, ix0) = runs[kj].clone();
            if run.is_empty() {
                continue;
            }
            for (oy, from) in oys.clone().zip(src.chunks_exact(self.ow.max(1))) {
                let iy = Self::src(oy, ki, s.stride.0, s.padding.0, s.dilation.0, s.h);
                let Some(iy) = iy else {
                    continue;
                };
                let to = &mut plane[iy * s.w + ix0..];
                let from = &from[run.clone()];
                if st == 1 {
                    for (d, &v) in to.iter_mut().zip(from) {
                        *d = *d + v;
                    }
                } else {
                    for (d, &v) in to.iter_mut().step_by(st).zip(from) {
                        *d = *d + v;
                    }
                }
            }
        }
    }

    /// Fills `col [K, imgs·B]` (rows `ld = imgs·B` apart) for the output rows `oys`
    /// (`B = oys.len()·ow` pixels) from the channels of group `g` of the images
    /// `x [imgs, c_in, h, w]`, image `j` in columns `j·B..`, through `table` (the
    /// [`Self::gather_table`] of `oys`) when given; in parallel over channels when `parallel`
    /// (the chunk's GEMM is parallel too: there are fewer chunks than threads).
    fn im2col<T: bytemuck::Pod + Send + Sync>(
        &self,
        (x, imgs): (&[T], usize),
        (g, oys): (usize, Range<usize>),
        col: &mut [T],
        (table, parallel): (Option<&[u32]>, bool),
    ) {
        let s = &self.s;
        let (plane, img_in) = (s.h * s.w, s.c_in * s.h * s.w);
        let px = oys.len() * self.ow;
        let ld = imgs * px;
        let block = self.box_len() * ld;
        let runs = self.column_runs();
        let channel = |(ci, rows): (usize, &mut [T])| {
            for j in 0..imgs {
                let src = &x[j * img_in + (g * self.cin_g + ci) * plane..][..plane];
                let how = (&runs[..], table);
                self.im2col_channel(src, &mut rows[j * px..], (ld, oys.clone()), how);
            }
        };
        let col = &mut col[..self.cin_g * block];
        if parallel && block > 0 {
            col.par_chunks_mut(block).enumerate().for_each(channel);
        } else if block > 0 {
            col.chunks_mut(block).enumerate().for_each(channel);
        }
    }

    /// Adds `col [K, imgs·B]` (output rows `oys`, `B = oys.len()·ow`, rows `imgs·B` apart)
    /// back into the channels of group `g` of the image gradients `dx [imgs, c_in, h, w]`,
    /// through `table` (the [`Self::gather_table`] of `oys`) when given; in parallel over
    /// (image, channel) when `parallel`.
    fn col2im<T: Float + Send + Sync>(
        &self,
        col: &[T],
        (g, oys): (usize, Range<usize>),
        (dx, imgs): (&mut [T], usize),
        (table, parallel): (Option<&[u32]>, bool),
    ) {
        let s = &self.s;
        let (plane, img_in) = (s.h * s.w, s.c_in * s.h * s.w);
        if plane == 0 {
            // Nothing to add to (the caller skips empty inputs).
            return;
        }
        let px = oys.len() * self.ow;
        let ld = imgs * px;
        let block = self.box_len() * ld;
        let group = g * self.cin_g * plane..(g + 1) * self.cin_g * plane;
        let runs = self.column_runs();
        let channel = |j: usize, ci: usize, to: &mut [T]| {
            let col = &col[ci * block + j * px..];
            let how = (&runs[..], table);
            self.col2im_channel(col, (ld, oys.clone()), how, to);
        };
        if parallel {
            dx.par_chunks_mut(img_in)
                .enumerate()
                .flat_map(|(j, img)| {
                    img[group.clone()]
                        .par_chunks_mut(plane)
                        .enumerate()
                        .map(move |(ci, to)| (j, ci, to))
                })
                .for_each(|(j, ci, to)| channel(j, ci, to));
        } else {
            for (j, img) in dx.chunks_mut(img_in).enumerate() {
                for (ci, to) in img[group.clone()].chunks_mut(plane).enumerate() {
                    channel(j, ci, to);
                }
            }
        }
    }
}

impl Geometry {
    /// Images per GEMM: enough that its N = images × P is at least 256 columns wide (late
    /// layers have few pixels: per image, 512 × 4 × 4608 runs at a third of the speed of a
    /// wide product), at most the batch.
    fn chunk_images(&self) -> usize {
        256usize.div_ceil(self.p.max(1)).clamp(1, self.s.n.max(1))
    }

    /// Whether a pass over all `n` images runs one GEMM per group (one chunk of images, one
    /// block of output rows), so that each reads the weight once.
    fn one_gemm_per_group(&self) -> bool {
        let per = self.chunk_images();
        per >= self.s.n && self.row_blocks(per).len() == 1
    }

    /// The output rows of one image cut into blocks whose im2col matrix `[K, rows·ow]` stays
    /// near 1 MiB, so that it is written and packed inside the core's L2 instead of making a
    /// round trip through memory (a 224-px ResNet's first stage has a 7 MiB im2col matrix per
    /// image). A block keeps at least `max(256, 4·cout_g)` columns: the GEMM's A operand (the
    /// weights, or `dy` for the weight gradient) is packed once per block. Chunks of several
    /// images (small pictures) are one block.
    fn row_blocks(&self, imgs: usize) -> Vec<Range<usize>> {
        let oh = self.p / self.ow.max(1);
        let cols = ((1usize << 18) / self.k.max(1))
            .max(256)
            .max(4 * self.cout_g);
        let blocks = if imgs > 1 || self.ow == 0 {
            1
        } else {
            oh.div_ceil(cols.div_ceil(self.ow)).max(1)
        };
        let rows = oh.div_ceil(blocks).max(1);
        (0..oh.max(1))
            .step_by(rows)
            .map(|r| r..(r + rows).min(oh))
            .collect()
    }
}

/// An im2col matrix's row stride and the output rows it covers.
type Rows = (usize, Range<usize>);

/// Output rows at most this wide go through a gather table ([`Geometry::gather_table`]).
const TABLE_MAX_OW: usize = 16;
/// The longest gather table (entries: box taps × output pixels of one image's rows).
const TABLE_MAX: usize = 1 << 16;
/// A gather-table entry that reads padding.
const PAD: u32 = u32::MAX;

/// Channel rows `r0..r0+rows` (`P` pixels each) of `imgs` per-image NCHW blocks (`img`
/// elements apart), pixels `px` of each, as one wide `[rows, imgs·px.len()]` matrix: row `r`
/// of image `j` is `images[j·img + (r0 + r)·P + px.start ..][..px.len()]`.
#[derive(Clone)]
struct Wide {
    rows: usize,
    p: usize,
    imgs: usize,
    img: usize,
    r0: usize,
    px: Range<usize>,
}

impl Wide {
    /// Whether the matrix is a plain view of the images: read (one image: rows `P` apart)
    /// or written (one image, every pixel: the rows are contiguous).
    fn is_view(&self, written: bool) -> bool {
        self.imgs == 1 && (!written || self.px == (0..self.p))
    }

    /// Its elements (`rows · imgs · px.len()`).
    fn len(&self) -> usize {
        self.rows * self.imgs * self.px.len()
    }

    /// The `(wide offset, image offset)` of each copied run.
    fn runs(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let w = self.px.len();
        (0..self.rows).flat_map(move |r| {
            (0..self.imgs).map(move |j| {
                let at = j * self.img + (self.r0 + r) * self.p + self.px.start;
                ((r * self.imgs + j) * w, at)
            })
        })
    }

    /// Copies the wide matrix into the images.
    fn scatter<T: Copy>(&self, wide: &[T], images: &mut [T]) {
        let w = self.px.len();
        for (from, to) in self.runs() {
            images[to..][..w].copy_from_slice(&wide[from..][..w]);
        }
    }

    /// The matrix and its row stride: the images' own memory when it is a view, else
    /// gathered into `wide`.
    fn of<'a, T: Copy>(&self, wide: &'a mut [T], images: &'a [T]) -> (&'a [T], usize) {
        if self.is_view(false) {
            return (&images[self.r0 * self.p + self.px.start..], self.p);
        }
        let w = self.px.len();
        for (to, from) in self.runs() {
            wide[to..][..w].copy_from_slice(&images[from..][..w]);
        }
        (wide, self.imgs * w)
    }
}

/// The scratch a wide matrix needs when it is `written` or read (none when it is a view of
/// the images).
fn wide_buffer<T: bytemuck::Pod>(shape: &Wide, written: bool) -> Result<Vec<T>> {
    if shape.is_view(written) {
        Ok(Vec::new())
    } else {
        crate::alloc::for_overwrite(shape.len())
    }
}

/// Runs `f(chunk index, chunk, serial)` over `chunk`-sized pieces of `data`, in parallel when
/// there are at least as many pieces as threads (`serial`: each piece's work then runs serially
/// inside), else one piece after another with `serial == false` (the GEMMs, im2col and col2im
/// parallel inside).
fn over_chunks<T: Send>(
    data: &mut [T],
    chunk: usize,
    f: impl Fn(usize, &mut [T], bool) -> Result<()> + Sync + Send,
) -> Result<()> {
    let pieces = data.len().div_ceil(chunk);
    if pieces >= rayon::current_num_threads() {
        data.par_chunks_mut(chunk)
            .enumerate()
            .try_for_each(|(i, d)| f(i, d, true))
    } else {
        data.chunks_mut(chunk)
            .enumerate()
            .try_for_each(|(i, d)| f(i, d, false))
    }
}

/// An element type convolutions read and the type they accumulate and return in: f32 → f32,
/// f64 → f64, bf16 → f32 (on AMX tiles or AVX512-BF16; else widened while the AVX2 kernel
/// packs it), f16 → f32 (widened while the f32 kernel packs it).
trait ConvElem: bytemuck::Pod + Send + Sync + 'static {
    type Acc: Float + bytemuck::Pod + Send + Sync + 'static;
}

/// The GEMM of `Self`'s convolutions with an A operand of `A` elements: `Self` itself, or an
/// F32 weight rounded to a half type (`RoundedF16`, `RoundedBf16`) — for the half types as it
/// is packed, for f32 in a scratch copy of the span the product reads ([`rounded_gemm`]): the
/// values of the autocast cast, without a copy of the whole weight.
trait ConvGemm<A>: ConvElem {
    /// `dst[m × n] (+)= A · B` (see `gemm_strided`).
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        shape: (usize, usize, usize),
        dst: &mut [Self::Acc],
        a: &[A],
        a_strides: (usize, usize),
        b: &[Self],
        b_strides: (usize, usize),
        accumulate: bool,
        parallel: bool,
    );
}

macro_rules! conv_gemm {
    ($t:ty, $a:ty, $gemm:path) => {
        impl ConvGemm<$a> for $t {
            fn gemm(
                shape: (usize, usize, usize),
                dst: &mut [<$t as ConvElem>::Acc],
                a: &[$a],
                a_strides: (usize, usize),
                b: &[$t],
                b_strides: (usize, usize),
                accumulate: bool,
                parallel: bool,
            ) {
                $gemm(shape, dst, a, a_strides, b, b_strides, accumulate, parallel)
            }
        }
    };
}
conv_gemm!(f32, f32, gemm_strided);
conv_gemm!(f64, f64, gemm_strided);
conv_gemm!(bf16, bf16, super::matmul::gemm_bf16);
conv_gemm!(bf16, RoundedBf16, super::matmul::gemm_bf16);
conv_gemm!(f16, f16, gemm_f16);
conv_gemm!(f16, RoundedF16, gemm_f16);
conv_gemm!(f32, RoundedF16, rounded_gemm::<f16, RoundedF16>);
conv_gemm!(f32, RoundedBf16, rounded_gemm::<bf16, RoundedBf16>);

/// The f32 GEMM with an A operand of F32 weight values rounded to `H` (`R`: `RoundedF16` or
/// `RoundedBf16`), for CPUs with no kernel that rounds as it packs, where the convolution
/// skips taps and runs one GEMM per group and pass (see [`rounding_weight`]): the span of A
/// this product reads — one group's tap box, not the whole weight: at 32 px a ResNet's last
/// stage reads 1 of its 9 taps — is rounded into a scratch copy (the same strides) and
/// multiplied by [`gemm_strided`]. The same values, shapes and strides as the GEMM of a
/// weight cast to `H` and widened, so the same bits.
#[allow(clippy::too_many_arguments)]
fn rounded_gemm<H: super::convert::Half, R: bytemuck::Pod>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    a: &[R],
    (a_rs, a_cs): (usize, usize),
    b: &[f32],
    b_strides: (usize, usize),
    accumulate: bool,
    parallel: bool,
) {
    let a: &[f32] = bytemuck::cast_slice(a);
    let a = &a[..span((m, k), (a_rs, a_cs))];
    // (Should the host cache's allocation fail, a plain one.)
    let rounded = rounded_through::<H>(a).unwrap_or_else(|_| {
        let mut v = vec![0f32; a.len()];
        H::round(a, &mut v);
        v
    });
    let shape = (m, n, k);
    gemm_strided(
        shape,
        dst,
        &rounded,
        (a_rs, a_cs),
        b,
        b_strides,
        accumulate,
        parallel,
    );
    crate::alloc::recycle(rounded);
}

impl ConvElem for f32 {
    type Acc = f32;
}
impl ConvElem for f64 {
    type Acc = f64;
}
impl ConvElem for bf16 {
    type Acc = f32;
}
impl ConvElem for f16 {
    type Acc = f32;
}

impl Geometry {
    /// The output-row blocks of a chunk of `imgs` images and the widest one's column count
    /// (`imgs · rows · ow`, the im2col scratch's row length).
    fn blocks(&self, imgs: usize) -> (Vec<Range<usize>>, usize) {
        let blocks = self.row_blocks(imgs);
        let most = blocks.iter().map(|b| b.len()).max().unwrap_or(0) * self.ow * imgs;
        (blocks, most)
    }

    /// Group `grp`'s output-channel rows of a chunk (`img_out` elements per image) over the
    /// output rows `oys`, as a wide matrix.
    fn wide(&self, imgs: usize, img_out: usize, grp: usize, oys: &Range<usize>) -> Wide {
        Wide {
            rows: self.cout_g,
            p: self.p,
            imgs,
            img: img_out,
            r0: grp * self.cout_g,
            px: oys.start * self.ow..oys.end * self.ow,
        }
    }
}

/// `y = conv(x, w)`: the weight `w` in `T`, or an F32 weight rounded to a half type as the
/// GEMM reads it (`W`, see [`ConvGemm`]).
fn forward<T, W>(x: &[T], w: &[W], g: &Geometry) -> Result<Vec<T::Acc>>
where
    T: ConvGemm<W>,
    W: bytemuck::Pod + Send + Sync,
{
    let s = &g.s;
    let img_in = s.c_in * s.h * s.w;
    let img_out = s.c_out * g.p;
    // Every element is written (by the GEMM or the scatter of its rows).
    let mut out = crate::alloc::for_overwrite::<T::Acc>(s.n * img_out)?;
    if img_out == 0 {
        return Ok(out);
    }
    let w = &*g.taps_of(w)?;
    let per = g.chunk_images();
    over_chunks(&mut out, per * img_out, |c, dst, serial| {
        let imgs = dst.len() / img_out;
        let (blocks, most) = g.blocks(imgs);
        let tables = g.gather_tables(&blocks);
        let mut col = crate::alloc::for_overwrite::<T>(g.k * most)?;
        // (The first block is the widest.)
        let mut wide = wide_buffer::<T::Acc>(&g.wide(imgs, img_out, 0, &blocks[0]), true)?;
        let x_c = &x[c * per * img_in..][..imgs * img_in];
        for grp in 0..s.groups {
            for (oys, table) in blocks.iter().zip(&tables) {
                let ld = imgs * oys.len() * g.ow;
                let shape = g.wide(imgs, img_out, grp, oys);
                let how = (table.as_deref(), !serial);
                g.im2col((x_c, imgs), (grp, oys.clone()), &mut col, how);
                let w_g = &w[grp * g.cout_g * g.k..];
                let y: &mut [T::Acc] = if shape.is_view(true) {
                    &mut dst[grp * g.cout_g * g.p..]
                } else {
                    &mut wide
                };
                let (a, b) = ((w_g, (g.k, 1)), (&col[..], (ld, 1)));
                <T as ConvGemm<W>>::gemm(
                    (g.cout_g, ld, g.k),
                    y,
                    a.0,
                    a.1,
                    b.0,
                    b.1,
                    false,
                    !serial,
                );
                if !shape.is_view(true) {
                    shape.scatter(&wide, dst);
                }
            }
        }
        crate::alloc::recycle(col);
        crate::alloc::recycle(wide);
        Ok(())
    })?;
    Ok(out)
}

/// `dx` from `dy` and the weight `w` (in `T`, or an F32 weight rounded to a half type as the
/// GEMM reads it: `W`, see [`ConvGemm`]).
fn backward_input<T, W>(dy: &[T], w: &[W], g: &Geometry) -> Result<Vec<T::Acc>>
where
    T: ConvGemm<W>,
    W: bytemuck::Pod + Send + Sync,
{
    let s = &g.s;
    let img_in = s.c_in * s.h * s.w;
    let img_out = s.c_out * g.p;
    let mut dx = crate::alloc::filled(s.n * img_in, <T::Acc as bytemuck::Zeroable>::zeroed())?;
    if img_in == 0 || img_out == 0 {
        // An empty input (H or W of 0 under padding) has an empty gradient; an empty output
        // adds nothing to it.
        return Ok(dx);
    }
    let w = &*g.taps_of(w)?;
    let per = g.chunk_images();
    over_chunks(&mut dx, per * img_in, |c, dst, serial| {
        let imgs = dst.len() / img_in;
        let (blocks, most) = g.blocks(imgs);
        let dy_c = &dy[c * per * img_out..][..imgs * img_out];
        let tables = g.gather_tables(&blocks);
        let mut dcol = crate::alloc::for_overwrite::<T::Acc>(g.k * most)?;
        let mut wide = wide_buffer::<T>(&g.wide(imgs, img_out, 0, &blocks[0]), false)?;
        for grp in 0..s.groups {
            for (oys, table) in blocks.iter().zip(&tables) {
                let ld = imgs * oys.len() * g.ow;
                // dcol [K, ld] = W_g^T [K, cout_g] · dy_g [cout_g, ld]
                let (dy_g, dy_ld) = g.wide(imgs, img_out, grp, oys).of(&mut wide, dy_c);
                let w_g = &w[grp * g.cout_g * g.k..];
                let (a, b) = ((w_g, (1, g.k)), (dy_g, (dy_ld, 1)));
                <T as ConvGemm<W>>::gemm(
                    (g.k, ld, g.cout_g),
                    &mut dcol,
                    a.0,
                    a.1,
                    b.0,
                    b.1,
                    false,
                    !serial,
                );
                let how = (table.as_deref(), !serial);
                g.col2im(&dcol, (grp, oys.clone()), (dst, imgs), how);
            }
        }
        crate::alloc::recycle(dcol);
        crate::alloc::recycle(wide);
        Ok(())
    })?;
    Ok(dx)
}

/// How a weight gradient's f32 sums end: as they are (`None`), or rounded through the
/// autocast dtype (a [`Half::round_in_place`](super::convert::Half::round_in_place)) when
/// the gradient reaches an F32 weight through its cast — applied chunk by chunk while the
/// sums are last in cache, not as a pass of its own over every weight gradient.
type Finish = Option<fn(&mut [f32])>;

/// Applies `finish` to `v` when the sums are f32 (the only ones rounded).
fn finish_chunk<A: 'static + bytemuck::Pod>(finish: Finish, v: &mut [A]) {
    if let Some(f) = finish {
        if std::any::TypeId::of::<A>() == std::any::TypeId::of::<f32>() {
            f(bytemuck::cast_slice_mut(v));
        }
    }
}

/// Elements per chunk of the weight gradient's last pass (runs added, `finish` applied): in L1.
const FINISH_CHUNK: usize = 4096;

/// `dw` from `x` and `dy`: over the tap box ([`Geometry::taps`]), ended by `finish`, spread
/// over the kernel (rounding leaves the skipped taps' zeros zero).
fn backward_weight<T: ConvGemm<T>>(
    x: &[T],
    dy: &[T],
    g: &Geometry,
    finish: Finish,
) -> Result<Vec<T::Acc>> {
    g.spread(backward_weight_box(x, dy, g, finish)?)
}

/// [`backward_weight`] over the tap box: `[c_out, K]`.
fn backward_weight_box<T: ConvGemm<T>>(
    x: &[T],
    dy: &[T],
    g: &Geometry,
    finish: Finish,
) -> Result<Vec<T::Acc>> {
    let s = &g.s;
    let img_in = s.c_in * s.h * s.w;
    let img_out = s.c_out * g.p;
    let wlen = s.c_out * g.k;
    let per = g.chunk_images();
    let chunks = s.n.div_ceil(per);
    let threads = rayon::current_num_threads();
    // Fewer chunks than threads: the chunks run one after another, each parallel inside.
    let few_chunks = chunks < threads;
    // dW_g [cout_g, K] += dy_g [cout_g, ld] · col^T [ld, K], chunk by chunk, block by block.
    // A run's first chunk starts from no accumulator (`None`): its first block of each group
    // overwrites a fresh buffer (no zero fill, and no read of zeros back: at small images the
    // weight-sized passes bound the step).
    let accumulate_chunk = |acc: Result<Option<Vec<T::Acc>>>, c: usize| {
        let (mut acc, mut fresh) = match acc? {
            Some(acc) => (acc, false),
            None => (crate::alloc::for_overwrite::<T::Acc>(wlen)?, true),
        };
        let imgs = per.min(s.n - c * per);
        let (blocks, most) = g.blocks(imgs);
        if blocks.is_empty() && fresh {
            acc.fill(<T::Acc as bytemuck::Zeroable>::zeroed());
            fresh = false;
        }
        let tables = g.gather_tables(&blocks);
        let mut col = crate::alloc::for_overwrite::<T>(g.k * most)?;
        let mut wide = wide_buffer::<T>(&g.wide(imgs, img_out, 0, &blocks[0]), false)?;
        let dy_c = &dy[c * per * img_out..][..imgs * img_out];
        let x_c = &x[c * per * img_in..][..imgs * img_in];
        for grp in 0..s.groups {
            for (bi, oys) in blocks.iter().enumerate() {
                let ld = imgs * oys.len() * g.ow;
                let how = (tables[bi].as_deref(), few_chunks);
                g.im2col((x_c, imgs), (grp, oys.clone()), &mut col, how);
                let (dy_g, dy_ld) = g.wide(imgs, img_out, grp, oys).of(&mut wide, dy_c);
                let dw_g = &mut acc[grp * g.cout_g * g.k..];
                let (a, b) = ((dy_g, (dy_ld, 1)), (&col[..], (1, ld)));
                <T as ConvGemm<T>>::gemm(
                    (g.cout_g, g.k, ld),
                    dw_g,
                    a.0,
                    a.1,
                    b.0,
                    b.1,
                    !(fresh && bi == 0),
                    few_chunks,
                );
            }
        }
        crate::alloc::recycle(col);
        crate::alloc::recycle(wide);
        Ok(Some(acc))
    };
    let zeros = || crate::alloc::filled(wlen, <T::Acc as bytemuck::Zeroable>::zeroed());
    let summed = |run: Result<Option<Vec<T::Acc>>>| run?.map_or_else(zeros, Ok);
    if few_chunks {
        let mut sum = summed((0..chunks).fold(Ok(None), accumulate_chunk))?;
        if finish.is_some() {
            sum.par_chunks_mut(FINISH_CHUNK)
                .for_each(|c| finish_chunk(finish, c));
        }
        Ok(sum)
    } else {
        // At most one accumulator per thread: `threads` fixed runs of consecutive chunks, each
        // summed in chunk order, the runs' sums added in run order — the same grouping on
        // every call (a rayon `fold` groups by which jobs were stolen, so the f32 sums, and a
        // training run, could differ between two identical calls).
        let per_run = chunks.div_ceil(threads);
        let runs: Vec<Result<Vec<T::Acc>>> = (0..chunks.div_ceil(per_run))
            .into_par_iter()
            .map(|r| {
                let run = r * per_run..((r + 1) * per_run).min(chunks);
                summed(run.fold(Ok(None), accumulate_chunk))
            })
            .collect();
        let mut runs = runs.into_iter();
        let mut sum = runs.next().unwrap_or_else(zeros)?;
        let rest = runs.collect::<Result<Vec<_>>>()?;
        // The other runs added (each element in run order) and `finish` applied, chunk by
        // chunk in parallel: one pass over the sum.
        sum.par_chunks_mut(FINISH_CHUNK)
            .enumerate()
            .for_each(|(i, c)| {
                for run in &rest {
                    let run = &run[i * FINISH_CHUNK..];
                    c.iter_mut().zip(run).for_each(|(x, &y)| *x = *x + y);
                }
                finish_chunk(finish, c);
            });
        for run in rest {
            // (Back to the host cache: dropped, a thread's accumulator left it every step and
            // the next step's took a fresh, page-faulted block.)
            crate::alloc::recycle(run);
        }
        Ok(sum)
    }
}

/// An operand of a convolution pass, named as in its errors.
#[derive(Clone, Copy)]
enum Operand {
    Input,
    Weight,
    GradOutput,
}

/// Validates `spec` for `op` and the lengths of its two operands (in order), and returns its
/// geometry.
fn checked(
    op: &'static str,
    spec: &Conv2dSpec,
    operands: [(Operand, &StorageRef); 2],
) -> Result<Geometry> {
    spec.validate(op)?;
    let g = Geometry::new(spec);
    for (which, s) in operands {
        let (what, want) = match which {
            Operand::Input => ("input", spec.n * spec.c_in * spec.h * spec.w),
            Operand::Weight => ("weight", spec.c_out * g.k_full()),
            Operand::GradOutput => ("grad_output", spec.n * spec.c_out * g.p),
        };
        let got = s.len();
        if got != want {
            return Err(Error::shape(
                op,
                format!("{what} has {got} elements, expected {want} for {spec:?}"),
            ));
        }
    }
    Ok(g)
}

/// Both operands (one dtype, dense in `spec.format`) in their compute type, in logical
/// (row-major NCHW / KCRS) order (borrowed when they already are: F32/F64 NCHW), and the
/// output dtype.
fn pair<'a>(
    op: &'static str,
    (ha, a_dims): (&'a CpuStorage, [usize; 4]),
    (hb, b_dims): (&'a CpuStorage, [usize; 4]),
    spec: &Conv2dSpec,
) -> Result<(ComputeRef<'a>, ComputeRef<'a>, DType)> {
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
        to_compute_ref(op, ha, &view(a_dims))?,
        to_compute_ref(op, hb, &view(b_dims))?,
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

/// The three GEMM passes of a convolution.
#[derive(Clone, Copy)]
enum Pass {
    /// `(x, w) → y`
    Forward,
    /// `(dy, w) → dx`
    BackwardInput,
    /// `(x, dy) → dw`, ended by a [`Finish`]
    BackwardWeight(Finish),
}

fn run_pass<T: ConvGemm<T>>(p: Pass, a: &[T], b: &[T], g: &Geometry) -> Result<Vec<T::Acc>> {
    match p {
        Pass::Forward => forward(a, b, g),
        Pass::BackwardInput => backward_input(a, b, g),
        Pass::BackwardWeight(finish) => backward_weight(a, b, g, finish),
    }
}

/// A BF16 or F16 operand in NCHW order (borrowed when it already is).
fn half_nchw<'a, T: crate::dtype::Element>(h: &'a CpuStorage, l: &Layout) -> Result<Cow<'a, [T]>> {
    let v = h.as_slice::<T>()?;
    Ok(match l.contiguous_start() {
        Some(start) => Cow::Borrowed(&v[start..start + l.elem_count()]),
        None => Cow::Owned(
            T::from_storage(gather_same(h, l)?)
                .ok_or_else(|| Error::dtype("conv2d", "a 16-bit gather changed dtype"))?,
        ),
    })
}

/// The layout of a `dims` operand dense in `format` (row-major when that is not a format).
fn view(dims: [usize; 4], format: crate::MemoryFormat) -> Layout {
    Layout::dense(dims, format).unwrap_or_else(|| Layout::contiguous(dims))
}

/// Runs pass `p` on two operands of one dtype (dense in `spec.format`): BF16 pairs on AMX or
/// AVX512-BF16 where the CPU has one (bf16 products, f32 accumulation), else — as F16 pairs —
/// read as half and widened inside the f32 GEMM's packing where the CPU has AVX-512 (f16) or
/// AVX2 (both: the same f32 arithmetic as widening first), everything else in its compute
/// type (f32; f64 for F64). Returns the
/// unrounded result in logical (NCHW) order and the operands' dtype.
fn compute_pass(
    op: &'static str,
    p: Pass,
    (a, a_dims): (&StorageRef, [usize; 4]),
    (b, b_dims): (&StorageRef, [usize; 4]),
    g: &Geometry,
) -> Result<(Compute, DType)> {
    let spec = &g.s;
    let (ha, hb) = (host(op, a)?, host(op, b)?);
    let view = |dims: [usize; 4]| view(dims, spec.format);
    let both = |d: DType| ha.dtype() == d && hb.dtype() == d;
    Ok(if both(DType::BF16) && super::matmul::bf16_packed() {
        let (x, y) = (
            half_nchw::<bf16>(&ha, &view(a_dims))?,
            half_nchw::<bf16>(&hb, &view(b_dims))?,
        );
        (Compute::F32(run_pass(p, &x, &y, g)?), DType::BF16)
    } else if both(DType::F16) && super::matmul::f16_packed() {
        // im2col in f16 (half the bytes), widened inside the GEMM's packing.
        let (x, y) = (
            half_nchw::<f16>(&ha, &view(a_dims))?,
            half_nchw::<f16>(&hb, &view(b_dims))?,
        );
        (Compute::F32(run_pass(p, &x, &y, g)?), DType::F16)
    } else {
        let (x, y, dtype) = pair(op, (&ha, a_dims), (&hb, b_dims), spec)?;
        let out = match (x, y) {
            (ComputeRef::F32(x), ComputeRef::F32(y)) => {
                let out = run_pass(p, &x, &y, g)?;
                ComputeRef::F32(x).recycle();
                ComputeRef::F32(y).recycle();
                Compute::F32(out)
            }
            (ComputeRef::F64(x), ComputeRef::F64(y)) => Compute::F64(run_pass(p, &x, &y, g)?),
            _ => return Err(Error::dtype(op, "mixed compute types")),
        };
        (out, dtype)
    })
}

/// [`compute_pass`], its result rounded once into the output dtype (`spec.out_dtype`, else
/// the operands'), stored in `spec.format`.
fn convolve(
    op: &'static str,
    p: Pass,
    a: (&StorageRef, [usize; 4]),
    b: (&StorageRef, [usize; 4]),
    (g, out_dims): (&Geometry, [usize; 4]),
) -> Result<CpuStorage> {
    let (out, dtype) = compute_pass(op, p, a, b, g)?;
    output(out, out_dims, g.s.out_dtype.unwrap_or(dtype), &g.s)
}

/// Forward convolution of `x [n, c_in, h, w]` and `w [c_out, c_in/groups, kh, kw]`.
pub(crate) fn conv2d(x: &StorageRef, w: &StorageRef, spec: &Conv2dSpec) -> Result<CpuStorage> {
    const OP: &str = "conv2d";
    let g = checked(OP, spec, [(Operand::Input, x), (Operand::Weight, w)])?;
    convolve(
        OP,
        Pass::Forward,
        (x, spec.input_dims()),
        (w, spec.weight_dims()),
        (&g, spec.output_dims()),
    )
}

/// Input gradient of [`conv2d`] from `dy [n, c_out, oh, ow]`.
pub(crate) fn conv2d_backward_input(
    dy: &StorageRef,
    w: &StorageRef,
    spec: &Conv2dSpec,
) -> Result<CpuStorage> {
    const OP: &str = "conv2d_backward_input";
    let g = checked(OP, spec, [(Operand::GradOutput, dy), (Operand::Weight, w)])?;
    convolve(
        OP,
        Pass::BackwardInput,
        (dy, spec.output_dims()),
        (w, spec.weight_dims()),
        (&g, spec.input_dims()),
    )
}

/// Weight gradient of [`conv2d`] from the input `x` and `dy`.
pub(crate) fn conv2d_backward_weight(
    x: &StorageRef,
    dy: &StorageRef,
    spec: &Conv2dSpec,
) -> Result<CpuStorage> {
    const OP: &str = "conv2d_backward_weight";
    let g = checked(OP, spec, [(Operand::Input, x), (Operand::GradOutput, dy)])?;
    convolve(
        OP,
        Pass::BackwardWeight(None),
        (x, spec.input_dims()),
        (dy, spec.output_dims()),
        (&g, spec.weight_dims()),
    )
}

/// The two half dtypes an autocast convolution computes in.
fn expect_half(op: &'static str, what: &str, dtype: DType) -> Result<()> {
    match dtype {
        DType::F16 | DType::BF16 => Ok(()),
        other => Err(Error::dtype(
            op,
            format!("{what} must be F16 or BF16, got {other}"),
        )),
    }
}

/// Pass `p` (forward, or input gradient) of a half operand `a` (`x` or `dy`, F16 or BF16)
/// with an F32 weight `w` rounded to `a`'s dtype as it is read: the values, and so the result,
/// of casting the weight first (nearest even), without the cast's copy — on AMX or AVX512-BF16
/// (bf16) or in the f32 kernel's packing (f16 with AVX-512; either with AVX2); where the CPU
/// has none of these, by the f32 GEMM on the operand widened and a rounded f32 copy of the
/// weight (of the tap box's span each GEMM reads, where taps are skipped).
fn rounding_weight(
    op: &'static str,
    p: Pass,
    (a, a_dims): (&StorageRef, [usize; 4]),
    w: &StorageRef,
    (g, out_dims): (&Geometry, [usize; 4]),
) -> Result<CpuStorage> {
    let spec = &g.s;
    let (ha, hw) = (host(op, a)?, host(op, w)?);
    expect_half(op, "the convolved operand", ha.dtype())?;
    if hw.dtype() != DType::F32 {
        return Err(Error::dtype(
            op,
            format!("the rounded weight must be F32, got {}", hw.dtype()),
        ));
    }
    let (a_view, w_view) = (
        view(a_dims, spec.format),
        view(spec.weight_dims(), spec.format),
    );
    let dtype = ha.dtype();
    let out = if dtype == DType::BF16 && super::matmul::bf16_packed() {
        let (x, w) = (
            half_nchw::<bf16>(&ha, &a_view)?,
            half_nchw::<f32>(&hw, &w_view)?,
        );
        match p {
            Pass::Forward => forward::<bf16, RoundedBf16>(&x, bytemuck::cast_slice(&w), g)?,
            _ => backward_input::<bf16, RoundedBf16>(&x, bytemuck::cast_slice(&w), g)?,
        }
    } else if dtype == DType::F16 && super::matmul::f16_packed() {
        let (x, w) = (
            half_nchw::<f16>(&ha, &a_view)?,
            half_nchw::<f32>(&hw, &w_view)?,
        );
        match p {
            Pass::Forward => forward::<f16, RoundedF16>(&x, bytemuck::cast_slice(&w), g)?,
            _ => backward_input::<f16, RoundedF16>(&x, bytemuck::cast_slice(&w), g)?,
        }
    } else {
        // The f32 GEMM on `a` widened and the weight rounded to `dtype` in f32: the values,
        // and so the result, of a cast to half and its widening. Where taps are skipped (small
        // images) and one GEMM per group reads the weight, that GEMM rounds the span of the tap
        // box it reads ([`rounded_gemm`]: at 32 px a ResNet's last stage reads 1 of its 9
        // taps); otherwise the whole weight is rounded once for the pass (at large images
        // several GEMMs per pass read it: each would round it again). In NCHW order.
        let w = half_nchw::<f32>(&hw, &w_view)?;
        let ComputeRef::F32(x) = to_compute_ref(op, &ha, &a_view)? else {
            return Err(Error::dtype(op, "a half operand widened to f64"));
        };
        let out = if g.skips_taps() && g.one_gemm_per_group() {
            match (p, dtype) {
                (Pass::Forward, DType::BF16) => forward::<f32, RoundedBf16>(&x, cast(&w), g)?,
                (Pass::Forward, _) => forward::<f32, RoundedF16>(&x, cast(&w), g)?,
                (_, DType::BF16) => backward_input::<f32, RoundedBf16>(&x, cast(&w), g)?,
                _ => backward_input::<f32, RoundedF16>(&x, cast(&w), g)?,
            }
        } else {
            let w = match dtype {
                DType::BF16 => rounded_through::<bf16>(&w)?,
                _ => rounded_through::<f16>(&w)?,
            };
            let out = match p {
                Pass::Forward => forward::<f32, f32>(&x, &w, g)?,
                _ => backward_input::<f32, f32>(&x, &w, g)?,
            };
            crate::alloc::recycle(w);
            out
        };
        ComputeRef::F32(x).recycle();
        out
    };
    output(
        Compute::F32(out),
        out_dims,
        spec.out_dtype.unwrap_or(dtype),
        spec,
    )
}

/// [`conv2d`] of an F16/BF16 `x` with an F32 weight rounded to `x`'s dtype as it is read
/// (see [`rounding_weight`]).
pub(crate) fn conv2d_rounding_weight(
    x: &StorageRef,
    w: &StorageRef,
    spec: &Conv2dSpec,
) -> Result<CpuStorage> {
    const OP: &str = "conv2d";
    let g = checked(OP, spec, [(Operand::Input, x), (Operand::Weight, w)])?;
    let out = (&g, spec.output_dims());
    rounding_weight(OP, Pass::Forward, (x, spec.input_dims()), w, out)
}

/// [`conv2d_backward_input`] with an F32 weight rounded to `dy`'s dtype as it is read (see
/// [`rounding_weight`]).
pub(crate) fn conv2d_backward_input_rounding_weight(
    dy: &StorageRef,
    w: &StorageRef,
    spec: &Conv2dSpec,
) -> Result<CpuStorage> {
    const OP: &str = "conv2d_backward_input";
    let g = checked(OP, spec, [(Operand::GradOutput, dy), (Operand::Weight, w)])?;
    let out = (&g, spec.input_dims());
    rounding_weight(OP, Pass::BackwardInput, (dy, spec.output_dims()), w, out)
}

/// [`conv2d_backward_weight`] of F16 or BF16 operands rounded to their dtype (once, nearest
/// even) and returned widened to F32: the gradient an F32 weight receives through its autocast
/// cast, without the half copy and its widening.
pub(crate) fn conv2d_backward_weight_widened(
    x: &StorageRef,
    dy: &StorageRef,
    spec: &Conv2dSpec,
) -> Result<CpuStorage> {
    const OP: &str = "conv2d_backward_weight";
    let g = checked(OP, spec, [(Operand::Input, x), (Operand::GradOutput, dy)])?;
    expect_half(OP, "input", x.dtype())?;
    if dy.dtype() != x.dtype() {
        return Err(Error::dtype(
            OP,
            format!(
                "grad_output {} differs from input {}",
                dy.dtype(),
                x.dtype()
            ),
        ));
    }
    use super::convert::Half;
    let finish: fn(&mut [f32]) = match x.dtype() {
        DType::BF16 => <bf16 as Half>::round_in_place,
        _ => <f16 as Half>::round_in_place,
    };
    let (a, b) = ((x, spec.input_dims()), (dy, spec.output_dims()));
    let pass = Pass::BackwardWeight(Some(finish));
    match compute_pass(OP, pass, a, b, &g)? {
        (c @ Compute::F32(_), DType::BF16 | DType::F16) => {
            output(c, spec.weight_dims(), DType::F32, spec)
        }
        _ => Err(Error::dtype(OP, "expected F16 or BF16 operands")),
    }
}

impl crate::backend::ConvOps for super::CpuBackend {
    fn conv2d(&self, x: &StorageRef, w: &StorageRef, spec: &Conv2dSpec) -> Result<StorageRef> {
        Ok(wrap(super::in_pool(|| conv2d(x, w, spec))?))
    }

    fn conv2d_backward_input(
        &self,
        dy: &StorageRef,
        w: &StorageRef,
        spec: &Conv2dSpec,
    ) -> Result<StorageRef> {
        Ok(wrap(super::in_pool(|| conv2d_backward_input(dy, w, spec))?))
    }

    fn conv2d_backward_weight(
        &self,
        x: &StorageRef,
        dy: &StorageRef,
        spec: &Conv2dSpec,
    ) -> Result<StorageRef> {
        Ok(wrap(super::in_pool(|| {
            conv2d_backward_weight(x, dy, spec)
        })?))
    }

    fn conv2d_rounds_f32_weight(&self) -> bool {
        true
    }

    fn conv2d_rounding_weight(
        &self,
        x: &StorageRef,
        w: &StorageRef,
        spec: &Conv2dSpec,
    ) -> Result<StorageRef> {
        Ok(wrap(super::in_pool(|| conv2d_rounding_weight(x, w, spec))?))
    }

    fn conv2d_backward_input_rounding_weight(
        &self,
        dy: &StorageRef,
        w: &StorageRef,
        spec: &Conv2dSpec,
    ) -> Result<StorageRef> {
        Ok(wrap(super::in_pool(|| {
            conv2d_backward_input_rounding_weight(dy, w, spec)
        })?))
    }

    fn conv2d_backward_weight_widened(
        &self,
        x: &StorageRef,
        dy: &StorageRef,
        spec: &Conv2dSpec,
    ) -> Result<StorageRef> {
        Ok(wrap(super::in_pool(|| {
            conv2d_backward_weight_widened(x, dy, spec)
        })?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(
        c: usize,
        (h, w): (usize, usize),
        ks: usize,
        st: usize,
        pad: usize,
        dil: usize,
    ) -> Conv2dSpec {
        Conv2dSpec {
            format: crate::MemoryFormat::Contiguous,
            out_dtype: None,
            n: 2,
            c_in: c,
            h,
            w,
            c_out: 4,
            kh: ks,
            kw: ks,
            stride: (st, st),
            padding: (pad, pad),
            dilation: (dil, dil),
            groups: 1,
        }
    }

    /// The tap box: the taps some output reads the image through, the whole kernel otherwise.
    #[test]
    fn tap_box_holds_the_taps_that_read_the_image() {
        let g = Geometry::new(&spec(8, (1, 1), 3, 1, 1, 1));
        assert_eq!((g.taps.clone(), g.k), ([1..2, 1..2], 8));
        let g = Geometry::new(&spec(8, (2, 2), 3, 2, 1, 1));
        assert_eq!((g.taps.clone(), g.k), ([1..3, 1..3], 32));
        let g = Geometry::new(&spec(3, (2, 1), 3, 1, 2, 2));
        assert_eq!((g.taps.clone(), g.k), ([1..2, 1..2], 3));
        // Every tap reads the image somewhere: the whole kernel.
        let g = Geometry::new(&spec(8, (2, 2), 3, 1, 1, 1));
        assert_eq!(
            (g.taps.clone(), g.k, g.skips_taps()),
            ([0..3, 0..3], 72, false)
        );
        let g = Geometry::new(&spec(8, (7, 7), 3, 2, 1, 1));
        assert!(!g.skips_taps());
    }

    /// [`rounded_gemm`] reads only its span of A (a group's rows in a longer weight, row-major
    /// and transposed) and gives the bits of the f32 GEMM of that span cast to the half type
    /// and widened; odd sizes, fresh random data.
    #[test]
    fn rounded_gemm_equals_the_gemm_of_the_cast_weight() {
        use super::super::convert::Half;
        use crate::{Device, Tensor};
        fn check<H: Half>(rounded: fn(f32) -> f32) {
            let (m, n, k) = (13, 7, 21);
            let randn = |len: usize| {
                Tensor::randn([len], DType::F32, Device::Cpu)
                    .and_then(|t| t.to_vec::<f32>())
                    .expect("random data")
            };
            // Three groups' worth of weight: the product reads the second, from an offset,
            // with a group after it.
            let (w, b) = (randn(3 * m * k), randn(k * n));
            let a = &w[m * k..];
            for strides in [(k, 1), (1, m)] {
                assert_eq!(span((m, k), strides), m * k, "{strides:?}");
                let mut got = vec![0f32; m * n];
                // (The carrier type of the weight does not matter; `H` rounds.)
                let r: &[RoundedF16] = bytemuck::cast_slice(a);
                rounded_gemm::<H, RoundedF16>(
                    (m, n, k),
                    &mut got,
                    r,
                    strides,
                    &b,
                    (n, 1),
                    false,
                    false,
                );
                let cast: Vec<f32> = a[..m * k].iter().map(|&v| rounded(v)).collect();
                let mut want = vec![0f32; m * n];
                gemm_strided(
                    (m, n, k),
                    &mut want,
                    &cast,
                    strides,
                    &b,
                    (n, 1),
                    false,
                    false,
                );
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{strides:?}");
                // The rounding happened: the unrounded weight gives other sums.
                let mut raw = vec![0f32; m * n];
                gemm_strided((m, n, k), &mut raw, a, strides, &b, (n, 1), false, false);
                assert_ne!(bits(&raw), bits(&want), "{strides:?}");
            }
        }
        check::<f16>(|v| f16::from_f32(v).to_f32());
        check::<bf16>(|v| bf16::from_f32(v).to_f32());
    }

    /// The convolution passes with an F32 weight rounded per GEMM (`RoundedF16`, `RoundedBf16`
    /// through [`rounded_gemm`]) give the bits of the same passes on the weight rounded first:
    /// grouped convolutions that skip taps (a 1 × 1 map; a 2 × 3 map at stride 2), forward and
    /// input gradient, each half type through its own carrier.
    #[test]
    fn passes_rounding_per_gemm_equal_the_passes_on_a_rounded_weight() -> Result<()> {
        use crate::{Device, Tensor};
        let randn = |len: usize| -> Result<Vec<f32>> {
            Tensor::randn([len], DType::F32, Device::Cpu)?.to_vec::<f32>()
        };
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for (hw, st) in [((1, 1), 1), ((2, 3), 2)] {
            let s = Conv2dSpec {
                c_in: 6,
                c_out: 4,
                groups: 2,
                ..spec(6, hw, 3, st, 1, 1)
            };
            let g = Geometry::new(&s);
            assert!(g.skips_taps(), "{hw:?}");
            let size = |d: [usize; 4]| d.iter().product::<usize>();
            let x = randn(size(s.input_dims()))?;
            let dy = randn(size(s.output_dims()))?;
            let w = randn(size(s.weight_dims()))?;
            let f16_w: Vec<f32> = w.iter().map(|&v| f16::from_f32(v).to_f32()).collect();
            let bf16_w: Vec<f32> = w.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
            let f16_r: &[RoundedF16] = cast(&w);
            let bf16_r: &[RoundedBf16] = cast(&w);
            assert_eq!(
                bits(&forward::<f32, RoundedF16>(&x, f16_r, &g)?),
                bits(&forward::<f32, f32>(&x, &f16_w, &g)?),
                "f16 forward {hw:?}"
            );
            assert_eq!(
                bits(&forward::<f32, RoundedBf16>(&x, bf16_r, &g)?),
                bits(&forward::<f32, f32>(&x, &bf16_w, &g)?),
                "bf16 forward {hw:?}"
            );
            assert_eq!(
                bits(&backward_input::<f32, RoundedF16>(&dy, f16_r, &g)?),
                bits(&backward_input::<f32, f32>(&dy, &f16_w, &g)?),
                "f16 input gradient {hw:?}"
            );
            assert_eq!(
                bits(&backward_input::<f32, RoundedBf16>(&dy, bf16_r, &g)?),
                bits(&backward_input::<f32, f32>(&dy, &bf16_w, &g)?),
                "bf16 input gradient {hw:?}"
            );
        }
        Ok(())
    }

    /// The gather-table path of im2col and col2im gives the bits of the per-row path: tiny
    /// maps (taps skipped), strides, padding, dilation, odd sizes, all and some output rows;
    /// fresh random data. Wider rows get no table.
    #[test]
    fn gather_table_equals_the_row_copies() {
        let mut seed = 0x05EE_D0F7_AB1E_u64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let cases = [
            spec(1, (1, 1), 3, 1, 1, 1),
            spec(1, (2, 2), 3, 1, 1, 1),
            spec(1, (2, 2), 3, 2, 1, 1),
            spec(1, (5, 7), 3, 1, 1, 1),
            spec(1, (8, 8), 3, 2, 1, 1),
            spec(1, (7, 9), 3, 2, 0, 1),
            spec(1, (13, 11), 7, 2, 3, 1),
            spec(1, (6, 5), 3, 1, 2, 2),
            spec(1, (9, 4), 1, 2, 0, 1),
            spec(1, (3, 8), 3, 1, 1, 1),
            spec(1, (5, 32), 3, 2, 1, 1),
        ];
        for sp in cases {
            let g = Geometry::new(&sp);
            let oh = g.p / g.ow.max(1);
            for oys in [0..oh, oh / 2..oh] {
                let table = g.gather_table(&oys).expect("narrow rows have a table");
                let runs = g.column_runs();
                let px = oys.len() * g.ow;
                let plane: Vec<f32> = (0..sp.h * sp.w).map(|_| rand()).collect();
                let (mut by_rows, mut by_table) =
                    (vec![7.0; g.box_len() * px], vec![7.0; g.box_len() * px]);
                let rows = (px, oys.clone());
                g.im2col_channel(&plane, &mut by_rows, rows.clone(), (&runs, None));
                g.im2col_channel(&plane, &mut by_table, rows.clone(), (&runs, Some(&table)));
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&by_rows), bits(&by_table), "im2col {sp:?} {oys:?}");
                let col: Vec<f32> = (0..g.box_len() * px).map(|_| rand()).collect();
                let (mut dx_rows, mut dx_table) = (plane.clone(), plane.clone());
                g.col2im_channel(&col, rows.clone(), (&runs, None), &mut dx_rows);
                g.col2im_channel(&col, rows, (&runs, Some(&table)), &mut dx_table);
                assert_eq!(bits(&dx_rows), bits(&dx_table), "col2im {sp:?} {oys:?}");
                assert_ne!(bits(&dx_rows), bits(&plane), "col2im added nothing {sp:?}");
                // Whole passes over two images (rows `2·px` apart), in parallel or not.
                let x: Vec<f32> = (0..2 * sp.h * sp.w).map(|_| rand()).collect();
                let len = g.box_len() * 2 * px;
                let (mut c_rows, mut c_table) = (vec![7.0; len], vec![7.0; len]);
                g.im2col((&x, 2), (0, oys.clone()), &mut c_rows, (None, false));
                g.im2col(
                    (&x, 2),
                    (0, oys.clone()),
                    &mut c_table,
                    (Some(&table), true),
                );
                assert_eq!(bits(&c_rows), bits(&c_table), "im2col x2 {sp:?} {oys:?}");
                let (mut d_rows, mut d_table) = (x.clone(), x.clone());
                g.col2im(&c_rows, (0, oys.clone()), (&mut d_rows, 2), (None, true));
                g.col2im(
                    &c_rows,
                    (0, oys.clone()),
                    (&mut d_table, 2),
                    (Some(&table), false),
                );
                assert_eq!(bits(&d_rows), bits(&d_table), "col2im x2 {sp:?} {oys:?}");
            }
        }
        // Rows too wide: 9 pixels of a stride-1 "same" row, 33 of a stride-2 one (17 with
        // AVX-512).
        let wide = Geometry::new(&spec(1, (4, 9), 3, 1, 1, 1));
        assert!(wide.gather_table(&(0..4)).is_none());
        let cols = if super::super::convert::avx512() {
            33
        } else {
            65
        };
        let wide = Geometry::new(&spec(1, (4, cols), 3, 2, 1, 1));
        assert!(wide.gather_table(&(0..2)).is_none());
        // 33 pixels of a stride-3 row; a table too long (9 taps × 5 000 rows × 8 pixels).
        let wide = Geometry::new(&spec(1, (4, 97), 3, 3, 1, 1));
        assert!(wide.gather_table(&(0..1)).is_none());
        let tall = Geometry::new(&spec(1, (5000, 8), 3, 1, 1, 1));
        assert!(tall.gather_table(&(0..5000)).is_none());
        assert!(tall.gather_table(&(0..100)).is_some());
    }

    /// Gathering the box's weight columns and spreading a box gradient back are inverse on
    /// the box and zero outside it.
    #[test]
    fn taps_gather_and_spread_round_trip() -> Result<()> {
        let g = Geometry::new(&spec(3, (2, 2), 3, 2, 1, 1));
        let w: Vec<f32> = (0..4 * 3 * 9).map(|i| i as f32 + 0.5).collect();
        let boxed = g.taps_of(&w)?.into_owned();
        assert_eq!(boxed.len(), 4 * g.k);
        assert_eq!(&boxed[..4], &[w[4], w[5], w[7], w[8]]);
        let full = g.spread(boxed)?;
        for (i, (&a, &b)) in full.iter().zip(&w).enumerate() {
            let inside = [4, 5, 7, 8].contains(&(i % 9));
            assert_eq!(a, if inside { b } else { 0.0 }, "{i}");
        }
        Ok(())
    }
}
