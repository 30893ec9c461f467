//! The AVX2 register tile of the f32 GEMM (`sgemm`) and its packers, for CPUs without AVX-512
//! (AMD Zen, Intel before Skylake-X), where the `gemm` crate serves f32 products but cannot
//! read half-precision operands: there an autocast convolution paid a rounded f32 copy of
//! every weight per pass and widened copies of its f16 activations (11 % of an fp16 training
//! step at 8 × 64 px on Zen 3, 6.6 % in the rounding alone). With this tile, f16 operands are
//! widened and autocast weights rounded (`vcvtps2ph`, nearest even) while packed, in cache, as
//! on AVX-512.
//!
//! The packed layouts are `sgemm`'s (`MR = 12`-row A slivers, `KC × NR = 32`-column B
//! slivers); one `12 × 32` tile runs as up to four `6 × 16` sub-tiles (12 ymm accumulators,
//! two B loads and six broadcasts per `k` step), column half by column half so that each half
//! of the B sliver serves both row halves from L1. Every element of C is a sum of f32 FMAs in
//! `k` order, as in the AVX-512 tile: DESIGN.md's GEMM bound (`K · 2^-24 · |A||B|`).
//!
//! Prediction (roofline of one Zen 3 core): 2 FMA pipes × 8 lanes × 2 flops = 32 flop/cycle;
//! the sub-tile issues 12 FMAs per 8 loads, so it is FMA-bound, like the `gemm` crate's own
//! AVX2 kernel (`16 × 6`): f16 products should run at the crate's f32 speed without the
//! copies.

#[cfg(target_arch = "x86_64")]
use super::{sgemm::MR, sgemm_pack::PackSrc};
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Rows of the sub-tile.
#[cfg(target_arch = "x86_64")]
const SR: usize = 6;
/// Columns of the sub-tile (two ymm vectors).
#[cfg(target_arch = "x86_64")]
const SC: usize = 16;

/// Whether this CPU runs the AVX2 tile and packers (AVX2, FMA and F16C; detected once;
/// `HEMI_CPU_NO_AVX2_GEMM` turns it off for comparisons: half products then widen their
/// operands for the `gemm` crate).
pub(crate) fn available() -> bool {
    #[cfg(test)]
    if tests::OFF.get() {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        static DETECTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| {
            std::env::var_os("HEMI_CPU_NO_AVX2_GEMM").is_none()
                && std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// One `MR × NR` tile with `sgemm::kernel`'s contract (A packed, or read in place when
/// `DIRECT`; `rows ≤ MR` valid rows; `mask0/1` the valid-column prefix of the two 16-column
/// halves), as up to four `6 × 16` sub-tiles.
///
/// # Safety
/// The CPU has AVX2 and FMA ([`available`]); the pointers as in `sgemm::kernel` (the packed
/// A sliver holds `kc · MR` values, zero past `rows`; the B sliver `kc` rows of `NR` values
/// `b_rs` apart; when `DIRECT`, `rows == MR`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn tile<const DIRECT: bool>(
    kc: usize,
    (a, a_rs, a_cs): (*const f32, usize, usize),
    b: *const f32,
    b_rs: usize,
    c: *mut f32,
    c_rs: usize,
    rows: usize,
    (mask0, mask1): (u16, u16),
    load_c: bool,
) {
    let cols = (mask0.count_ones() + mask1.count_ones()) as usize;
    for h in 0..2 {
        let width = cols.saturating_sub(h * SC).min(SC);
        for r in 0..2 {
            let height = rows.saturating_sub(r * SR).min(SR);
            if width == 0 || height == 0 {
                continue;
            }
            // SAFETY: rows r·SR.. of the tile (packed: values r·SR.. of each k group, zero past
            // `rows`; in place: whole rows, as `rows == MR`), columns h·SC.. of the B sliver
            // and of C (`width > 0` of them: inside C), as the caller guarantees.
            unsafe {
                let a_r = a.add(r * SR * if DIRECT { a_rs } else { 1 });
                let c_r = c.add(r * SR * c_rs + h * SC);
                let ops = ((a_r, a_rs, a_cs), b.add(h * SC), b_rs);
                sub_tile::<DIRECT>(kc, ops, (c_r, c_rs), (height, width), load_c);
            }
        }
    }
}

/// `C[height × width] (+)= A[6 × kc] · B[kc × 16]`: six rows of A (packed: `MR` values per `k`
/// step, the first six used; in place when `DIRECT`: rows `a_rs` apart, `k` steps `a_cs` apart)
/// broadcast against two vectors of a B row, in 12 accumulators; C rows `c_rs` apart. Rows of
/// C narrower than 16 go through a 16-value copy (no access past their `width` values: AMD
/// leaves faults on masked-off lanes of `vmaskmovps` implementation-defined).
///
/// # Safety
/// AVX2 and FMA; A's six rows and B's `kc` rows of 16 values are readable; C's `height` rows
/// of `width` values are writable.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::type_complexity)]
unsafe fn sub_tile<const DIRECT: bool>(
    kc: usize,
    ((a, a_rs, a_cs), b, b_rs): ((*const f32, usize, usize), *const f32, usize),
    (c, c_rs): (*mut f32, usize),
    (height, width): (usize, usize),
    load_c: bool,
) {
    let full = width == SC;
    let mut acc = [[_mm256_setzero_ps(); 2]; SR];
    if load_c {
        for (i, row) in acc.iter_mut().enumerate().take(height) {
            // SAFETY: row i < height of C holds `width` writable (so readable) values.
            unsafe {
                let ci = c.add(i * c_rs);
                let mut edge = [0f32; SC];
                let from = if full {
                    ci.cast_const()
                } else {
                    std::ptr::copy_nonoverlapping(ci, edge.as_mut_ptr(), width);
                    edge.as_ptr()
                };
                *row = [_mm256_loadu_ps(from), _mm256_loadu_ps(from.add(8))];
            }
        }
    }
    for p in 0..kc {
        // SAFETY: B row p holds 16 readable values; A's six rows at step p are readable.
        unsafe {
            let bp = b.add(p * b_rs);
            let (b0, b1) = (_mm256_loadu_ps(bp), _mm256_loadu_ps(bp.add(8)));
            let ap = a.add(p * if DIRECT { a_cs } else { MR });
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = _mm256_broadcast_ss(&*ap.add(if DIRECT { i * a_rs } else { i }));
                row[0] = _mm256_fmadd_ps(ai, b0, row[0]);
                row[1] = _mm256_fmadd_ps(ai, b1, row[1]);
            }
        }
    }
    for (i, row) in acc.iter().enumerate().take(height) {
        // SAFETY: row i < height of C holds `width` writable values.
        unsafe {
            let ci = c.add(i * c_rs);
            if full {
                _mm256_storeu_ps(ci, row[0]);
                _mm256_storeu_ps(ci.add(8), row[1]);
            } else {
                let mut edge = [0f32; SC];
                _mm256_storeu_ps(edge.as_mut_ptr(), row[0]);
                _mm256_storeu_ps(edge.as_mut_ptr().add(8), row[1]);
                std::ptr::copy_nonoverlapping(edge.as_ptr(), ci, width);
            }
        }
    }
}

/// `out[p * NR + j] = src[p * rs + j]` for `j < cols` (≤ `NR`), 0 past it, for `p < kc`: four
/// 8-lane loads (widened or rounded for half operands) and stores per row.
///
/// # Safety
/// `S::avx2()` holds; `src` holds `(kc - 1) * rs + cols` values, `out` `kc * NR`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn copy_rows<S: PackSrc>(
    src: &[S],
    rs: usize,
    (kc, cols): (usize, usize),
    out: &mut [f32],
) {
    use super::sgemm::NR;
    debug_assert!(kc > 0 && src.len() > (kc - 1) * rs + cols - 1 && out.len() >= kc * NR);
    let line = 64 / size_of::<S>();
    for p in 0..kc {
        // (A B sliver of a transposed product is a weight's rows, 128 bytes of each of `kc`
        // rows far apart: too many streams for the hardware prefetcher, so the lines 512 bytes
        // on along the row — the sliver four on — are fetched ahead.)
        let ahead = src.as_ptr().wrapping_add(p * rs + 512 / size_of::<S>());
        for l in 0..NR.div_ceil(line) {
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(l * line).cast());
        }
        for q in 0..NR / 8 {
            let n = cols.saturating_sub(8 * q).min(8);
            // SAFETY: row p's first `cols` values lie inside `src`; out row p holds NR.
            unsafe {
                let v = if n == 0 {
                    _mm256_setzero_ps()
                } else {
                    S::load8(src.as_ptr().add(p * rs + 8 * q), n)
                };
                _mm256_storeu_ps(out.as_mut_ptr().add(p * NR + 8 * q), v);
            }
        }
    }
}

/// For slivers `s < count` and `p < kc`: `out[(s * kc + p) * MR + i] = src[p * cs + s * MR + i]`
/// (`i < MR`): the column-major A of an input gradient (a transposed weight), k step by k
/// step across the slivers, each step's `MR` values as 8 + 4 lanes.
///
/// # Safety
/// `S::avx2()` holds; `src` holds `(kc - 1) * cs + count * MR` values, `out` `count * kc * MR`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn copy_columns<S: PackSrc>(
    src: &[S],
    cs: usize,
    (kc, count): (usize, usize),
    out: &mut [f32],
) {
    debug_assert!(kc > 0 && src.len() >= (kc - 1) * cs + count * MR);
    debug_assert!(out.len() >= count * kc * MR);
    for p in 0..kc {
        for s in 0..count {
            // SAFETY: MR values at `p * cs + s * MR` lie inside `src`; MR at
            // `(s * kc + p) * MR` inside `out`.
            unsafe {
                let from = src.as_ptr().add(p * cs + s * MR);
                // (`kc` rows of a weight read 48 bytes at a time each: too many streams for
                // the hardware prefetcher, so the line 512 bytes on along the row is fetched
                // ahead.)
                _mm_prefetch::<_MM_HINT_T0>(from.wrapping_add(512 / size_of::<S>()).cast());
                let to = out.as_mut_ptr().add((s * kc + p) * MR);
                _mm256_storeu_ps(to, S::load8(from, 8));
                let rest = S::load8(from.add(8), MR - 8);
                _mm_storeu_ps(to.add(8), _mm256_castps256_ps128(rest));
            }
        }
    }
}

/// `sgemm_pack::transpose_rows` in 8 × 8 blocks: 8 source rows loaded 8 values at a time
/// (fewer at the `len` tail; empty rows are zero vectors), transposed in registers, stored as
/// 8 destination rows of up to 8 values (4 lanes, or copied, at the `width` edge). Blocks of 8
/// whole rows run without any of those branches.
///
/// # Safety
/// `S::avx2()` holds; every non-empty `src[i]` holds at least `len` values; `width ≤ src.len()`;
/// `dst` holds `len * width`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn transpose_rows<S: PackSrc>(
    src: &[&[S]],
    len: usize,
    dst: &mut [f32],
    width: usize,
) {
    for i0 in (0..width).step_by(8) {
        let count = (width - i0).min(8);
        let rows = &src[i0..i0 + count];
        let mut p0 = 0;
        if count == 8 && rows.iter().all(|r| !r.is_empty()) {
            let at: [*const S; 8] = std::array::from_fn(|i| rows[i].as_ptr());
            while p0 + 8 <= len {
                // SAFETY: every row holds at least `len` values; dst row p0 + p < len holds
                // lanes i0..i0 + 8 ≤ width.
                unsafe {
                    let t = transpose8(std::array::from_fn(|i| S::load8(at[i].add(p0), 8)));
                    for (p, v) in t.iter().enumerate() {
                        _mm256_storeu_ps(dst.as_mut_ptr().add((p0 + p) * width + i0), *v);
                    }
                }
                p0 += 8;
            }
        }
        for p0 in (p0..len).step_by(8) {
            let steps = (len - p0).min(8);
            let mut r = [_mm256_setzero_ps(); 8];
            for (v, s) in r.iter_mut().zip(rows) {
                if !s.is_empty() {
                    // SAFETY: `s` holds at least `len` values; `steps` from p0 lie inside.
                    *v = unsafe { S::load8(s.as_ptr().add(p0), steps) };
                }
            }
            let t = transpose8(r);
            for (p, v) in t.iter().enumerate().take(steps) {
                // SAFETY: dst holds len * width values; row p0 + p < len, lanes i0..i0+count
                // < width.
                unsafe {
                    let to = dst.as_mut_ptr().add((p0 + p) * width + i0);
                    match count {
                        8 => _mm256_storeu_ps(to, *v),
                        4 => _mm_storeu_ps(to, _mm256_castps256_ps128(*v)),
                        _ => {
                            let mut edge = [0f32; 8];
                            _mm256_storeu_ps(edge.as_mut_ptr(), *v);
                            std::ptr::copy_nonoverlapping(edge.as_ptr(), to, count);
                        }
                    }
                }
            }
        }
    }
}

/// The transpose of an 8 × 8 block held as 8 rows: `out[c]` lane `r` = `rows[r]` lane `c`.
/// Pairs of rows interleave 32-bit elements, then 64-bit pairs (each 128-bit lane now holds a
/// 4 × 4 block's column), then the 128-bit halves are recombined.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2")]
fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    // t[2i] = (a0 b0 a1 b1 | a4 b4 a5 b5), t[2i+1] = (a2 b2 a3 b3 | a6 b6 a7 b7).
    let t: [__m256; 8] = std::array::from_fn(|j| {
        let (a, b) = (r[j & !1], r[j | 1]);
        if j % 2 == 0 {
            _mm256_unpacklo_ps(a, b)
        } else {
            _mm256_unpackhi_ps(a, b)
        }
    });
    // s[4i + q] holds columns q and q + 4 of rows 4i..4i+4 (low and high half).
    let s: [__m256; 8] = std::array::from_fn(|j| {
        let (i, q) = (j / 4, j % 4);
        let (a, b) = (t[4 * i + q / 2], t[4 * i + 2 + q / 2]);
        if q % 2 == 0 {
            _mm256_shuffle_ps::<0x44>(a, b)
        } else {
            _mm256_shuffle_ps::<0xEE>(a, b)
        }
    });
    std::array::from_fn(|c| {
        if c < 4 {
            _mm256_permute2f128_ps::<0x20>(s[c], s[4 + c])
        } else {
            _mm256_permute2f128_ps::<0x31>(s[c - 4], s[c])
        }
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    thread_local! {
        /// Turns the AVX2 path off on this test thread ([`without_avx2`]).
        pub(super) static OFF: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// Runs `f` on this thread as on a CPU without AVX2 (the packers' scalar branches).
    pub(crate) fn without_avx2(f: impl FnOnce()) {
        OFF.set(true);
        f();
        OFF.set(false);
    }

    /// The 8 × 8 transpose against its definition.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn transpose8_matches_definition() {
        if !available() {
            println!("skipped: this CPU has no AVX2/FMA/F16C (or HEMI_CPU_NO_AVX2_GEMM is set)");
            return;
        }
        let mut rows = [[0f32; 8]; 8];
        let mut draw = super::super::gemm_check::uniform(0x51ED_270B_2F4A_1C33);
        rows.iter_mut().flatten().for_each(|v| *v = draw());
        // SAFETY: AVX2 was detected; each row holds 8 values.
        let t = unsafe { transpose8(std::array::from_fn(|i| _mm256_loadu_ps(rows[i].as_ptr()))) };
        for (c, v) in t.iter().enumerate() {
            let mut col = [0f32; 8];
            // SAFETY: `col` holds 8 values.
            unsafe { _mm256_storeu_ps(col.as_mut_ptr(), *v) };
            for (r, x) in col.iter().enumerate() {
                assert_eq!(x.to_bits(), rows[r][c].to_bits(), "({r}, {c})");
            }
        }
    }
}
