//! f32 GEMM with an AVX-512 microkernel, chosen at run time where the CPU has AVX-512F (the
//! `gemm` crate's AVX-512 kernels need a nightly compiler; on stable it runs AVX2 only). Other
//! CPUs, and f64, keep the `gemm` crate for f32 operands; half-precision operands, which the
//! crate cannot read, run this driver's AVX2 tile there ([`sgemm_avx2`](super::sgemm_avx2)).
//!
//! The shapes hemi multiplies on the CPU are mostly small (one image of a convolution:
//! `C_out × (H·W) × (C_in·9)`), so packing must cost little: A is packed `KC` deep into
//! `MR`-row slivers (zero-padded), each `KC × NR` sliver of B (any strides: the weight gradient
//! reads a transposed one) is packed once per pass and used by every row tile (A in blocks of
//! rows and B in panels where a pass would outgrow L2, B in panels for shallow passes too,
//! see `gemm_serial`), and a
//! `MR × NR = 12 × 32` register tile (24 zmm accumulators, A broadcast from the sliver) runs
//! `KC` fused multiply-adds per element, with masked stores at the column edge. C is
//! accumulated across `KC` passes in memory. Every element is a sum of f32 FMAs in `k` order,
//! so the error bound is DESIGN.md's GEMM bound (`K · 2^-24 · |A||B|`, within the stated
//! `K · 2^-23`).
//!
//! Prediction (roofline of one core): 2 FMA units × 16 lanes × 2 flops = 64 flop/cycle; the
//! kernel issues 24 FMAs per 2 loads + 12 broadcasts per k step, so it is FMA-bound at about
//! 90% of that; the `gemm` crate's AVX2 kernel peaks at half of it (8 lanes).

/// Rows of the register tile.
pub(crate) const MR: usize = 12;
/// Columns of the register tile (two zmm vectors).
pub(crate) const NR: usize = 32;
/// Depth of one pass over k (A and B slivers of this depth stay in L1).
const KC: usize = 256;

/// Whether this CPU runs the AVX-512 kernel (detected once; `HEMI_CPU_NO_AVX512` turns it off
/// for comparisons).
pub(crate) fn available() -> bool {
    #[cfg(test)]
    if tests::NO_AVX512.get() {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        static DETECTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| {
            std::env::var_os("HEMI_CPU_NO_AVX512").is_none()
                && std::arch::is_x86_feature_detected!("avx512f")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether the AVX-512 kernel beats the `gemm` crate for an `m × n` f32 product: rows of C at
/// least one register tile (32 columns) wide, or (run transposed, see [`transposed_better`])
/// 4 to 15 columns and at least 32 rows. Measured per ResNet shape at 2 threads (a throwaway
/// timing loop over the kernels and the crate; the train-step bench shows the effect), in
/// GFLOP/s, kernel vs crate: 64×256×576 108 vs 79 (one core), 512×98×4608 237 (transposed)
/// vs 137, 4608×98×512 218 vs 93; narrow ones transposed: 512×4×4608 53 vs 34, 4608×4×512 39
/// vs 19, 512×8×4608 87 vs 76, 512×12×4608 119 vs 89. Between 16 and 31 columns neither
/// orientation wins everywhere (256×16×2304 104 as is, 100 transposed, 147 in the crate;
/// 2304×16×256 64, 112, 99; 256×24×2304 142, 130, 87): those stay with the crate.
pub(crate) fn suits((m, n): (usize, usize)) -> bool {
    available() && suits_shape((m, n))
}

/// The shapes of [`suits`], whatever the CPU.
pub(crate) fn suits_shape((m, n): (usize, usize)) -> bool {
    (n >= NR && m >= 16) || (m >= NR && (4..16).contains(&n))
}

/// The padded rows the kernel computes for `rows` rows of C: full 12-row tiles and one tile
/// of 4, 8 or 12 for the rest ([`kernel_for`]).
fn padded_rows(rows: usize) -> usize {
    rows / MR * MR + (rows % MR).next_multiple_of(4)
}

/// Whether the product runs faster as its transpose `Cᵀ [n × m] = Bᵀ · Aᵀ` (then transposed
/// back): always when C is narrower than a tile but at least one tall; otherwise when the
/// share of the kernel's multiply-adds that land in C, `m/padded_rows(m) · n/(32·⌈n/32⌉)`, is
/// higher that way by more than 10 % (measured: the transposed run costs that much more at
/// equal shares, 256×392×2304 242 vs 228 GFLOP/s) plus the two passes over C (a 2·k-flop dot
/// product per element against one or two element moves: `32/k`). A 224-px ResNet's last
/// stage multiplies 98 columns (2 images × 7 × 7): 77 % of its four 32-wide tiles are used,
/// transposed 98 % of its rows (512×98×4608: 189 → 237 GFLOP/s). The same f32 products summed
/// in the same `k` order either way, so the same bits.
fn transposed_better((m, n, k): (usize, usize, usize)) -> bool {
    let used = |rows: usize, cols: usize| {
        (rows as f64 / padded_rows(rows) as f64) * (cols as f64 / cols.next_multiple_of(NR) as f64)
    };
    if n >= NR || m < NR {
        m >= NR && used(n, m) > used(m, n) * (1.1 + 32.0 / k.max(1) as f64)
    } else {
        true
    }
}

use super::sgemm_pack::{grow, pack_a, pack_b_sliver, PackSrc};

thread_local! {
    /// Packing buffers reused across calls on this thread (no allocation or zero-fill per call).
    static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// One register tile: `C[rows × cols] (+)= A_sliver · B[kc × cols]`, where the A sliver holds
/// `kc` groups of `MR` values — or, when `DIRECT`, A is read in place: `R` rows `a_rs` apart,
/// consecutive k `a_cs` apart (then `rows == R`) —, B rows start `b_rs` apart, C rows `c_rs` apart; `mask0/1` select
/// the valid columns of the two 16-lane halves.
///
/// # Safety
/// The CPU has AVX-512F; `a` is valid for `kc * MR` reads (when `DIRECT`: `rows == R` and
/// `a + i*a_rs + p*a_cs` is readable for `i < R, p < kc`); for `p < kc`, the `cols` floats at
/// `b + p*b_rs` are readable; for `i < rows`, the `cols` floats at `c + i*c_rs` are writable.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel<const R: usize, const DIRECT: bool>(
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
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    if load_c {
        for (i, row) in acc.iter_mut().enumerate() {
            if i < rows {
                // SAFETY: row i < rows of C is writable (so readable) for the masked columns.
                unsafe {
                    row[0] = _mm512_maskz_loadu_ps(mask0, c.add(i * c_rs));
                    row[1] = _mm512_maskz_loadu_ps(mask1, c.add(i * c_rs + 16));
                }
            }
        }
    }
    for p in 0..kc {
        // SAFETY: B row p is readable for the masked columns; A holds kc * MR values.
        unsafe {
            let bp = b.add(p * b_rs);
            let b0 = _mm512_maskz_loadu_ps(mask0, bp);
            let b1 = _mm512_maskz_loadu_ps(mask1, bp.add(16));
            let ap = a.add(p * if DIRECT { a_cs } else { MR });
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = _mm512_set1_ps(*ap.add(if DIRECT { i * a_rs } else { i }));
                row[0] = _mm512_fmadd_ps(ai, b0, row[0]);
                row[1] = _mm512_fmadd_ps(ai, b1, row[1]);
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        if i < rows {
            // SAFETY: row i < rows of C is writable for the masked columns.
            unsafe {
                _mm512_mask_storeu_ps(c.add(i * c_rs), mask0, row[0]);
                _mm512_mask_storeu_ps(c.add(i * c_rs + 16), mask1, row[1]);
            }
        }
    }
}

/// The register tile for `rows` (≤ `MR`) rows of C: 4, 8 or 12 rows of accumulators (a
/// 64-row C is five 12-row tiles and a 4-row one, not six of 12: 64/72 of the FMAs were
/// useful before, all of them now); without AVX-512, the AVX2 tile (6-row sub-tiles).
#[cfg(target_arch = "x86_64")]
#[allow(clippy::type_complexity)]
fn kernel_for(rows: usize) -> Kernel {
    if !available() {
        return super::sgemm_avx2::tile::<false>;
    }
    match rows {
        0..=4 => kernel::<4, false>,
        5..=8 => kernel::<8, false>,
        _ => kernel::<MR, false>,
    }
}

/// The tile that reads A in place (full `MR`-row tiles of an f32 A): AVX-512's, or the AVX2
/// one ([`sgemm_avx2::tile`](super::sgemm_avx2::tile)).
#[cfg(target_arch = "x86_64")]
fn direct_kernel() -> Kernel {
    if available() {
        kernel::<MR, true>
    } else {
        super::sgemm_avx2::tile::<true>
    }
}

/// The signature of [`kernel`]'s instances.
#[cfg(target_arch = "x86_64")]
type Kernel = unsafe fn(
    usize,
    (*const f32, usize, usize),
    *const f32,
    usize,
    *mut f32,
    usize,
    usize,
    (u16, u16),
    bool,
);

/// The lane masks of the first `cols` (≤ 32) columns.
pub(crate) fn masks(cols: usize) -> (u16, u16) {
    let m = if cols >= 32 {
        u32::MAX
    } else {
        (1u32 << cols) - 1
    };
    (m as u16, (m >> 16) as u16)
}

/// Packed values (f32) of A or B beyond which [`gemm_serial`] blocks an operand: 256 KiB, so
/// that a B panel and a 192 KiB block of A stay in a core's L2 together (512 KiB on Zen 3,
/// 2 MiB on Sapphire Rapids).
const PANEL: usize = 1 << 16;
/// Rows of A per block where its `m × kc` pass exceeds [`PANEL`]: 16 slivers (192 KiB at
/// `KC`).
const MC: usize = 16 * MR;
/// Passes at most this deep run a block's row tiles across all slivers (see [`gemm_serial`]).
const SHALLOW: usize = 64;

/// `dst[m × n] (+)= A · B` serially.
///
/// Per `KC`-deep pass, A is packed whole or, where that exceeds [`PANEL`] values, `MC` rows
/// at a time, and each block meets the `KC × NR` slivers of B: packed one at a time as they
/// are reached where A is one block and the pass deep, else first into panels of at most
/// `PANEL` values, so that the blocks (or the row sweeps below) do not pack them again; A is
/// packed per panel (again for each further panel: a `1/width` share of the FMAs). (Packed
/// whole, the A of an input gradient — `K × C_out` rows, 4608 × 256 f32 or 4.5 MiB at a
/// ResNet's last stage — left L2, and every sliver streamed it back from L3: 4608 × 32 × 512
/// with A rounded to f16, 1.08× blocked on one Zen 3 core, median of 9 interleaved runs.)
///
/// A product at most `NR` columns wide (a late ResNet layer at small images: 512 × 32 × 4608)
/// has one B sliver, so each A value feeds one register tile: packing A there costs a write
/// and a read of the whole (weight) matrix for 64 flops per value. With f32 operands its
/// full 12-row tiles read A in place instead (12 row streams, or 12 adjacent values per k for
/// a column-major A; all rows one block); only the last partial tile is packed (zero rows
/// beyond `m`).
///
/// A shallow pass (`kc ≤ SHALLOW`: a weight gradient over few pixels, 512 × 4608 × 32) does
/// little work per element of C, so C's traffic dominates: there each row tile of a block
/// sweeps all slivers of the panel, writing C row by row, rather than each sliver sweeping the
/// row tiles down a 32-column strip of C whose rows are pages apart. On one Zen 3 core, median
/// new/old ratio of 9 interleaved pairs (best GFLOP/s of each in brackets): 512 × 4608 × 32
/// 1.32× with A rounded to f16, 1.38× f32 (63 → 74, 52 → 72; the `gemm` crate's f32 74);
/// 512 × 4608 × 4 2.1×, 1.8× (22 → 36, 27 → 39; crate 29).
fn gemm_serial<SA: PackSrc, SB: PackSrc>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    a: (&[SA], (usize, usize)),
    b: (&[SB], (usize, usize)),
    accumulate: bool,
    (pa, pb): (&mut Vec<f32>, &mut Vec<f32>),
) {
    let ((rs, cs), (a_rs, a_cs)) = (b.1, a.1);
    assert!(dst.len() >= m * n && b.0.len() > (k - 1) * rs + (n - 1) * cs);
    assert!(a.0.len() > (m - 1) * a_rs + (k - 1) * a_cs);
    let direct = SA::as_f32(a.0).filter(|_| n <= NR);
    // Rows read in place (full tiles), the rest packed.
    let full = if direct.is_some() { m / MR * MR } else { 0 };
    for pc in (0..k).step_by(KC) {
        let kc = KC.min(k - pc);
        let pass = Pass {
            pc,
            kc,
            load_c: accumulate || pc > 0,
            by_rows: kc <= SHALLOW,
        };
        // Rows per block: all of them when A is read in place or its pass fits L2.
        let block = if direct.is_some() || m * kc <= PANEL {
            m
        } else {
            MC
        };
        // B sliver by sliver as the block reaches it (one block of A, deep passes), else
        // packed first, a panel of at most PANEL values at a time.
        let panel = pass.by_rows || block < m;
        let width = if panel {
            (PANEL / kc / NR * NR).max(NR)
        } else {
            n
        };
        for j1 in (0..n).step_by(width) {
            let cols = width.min(n - j1);
            if panel {
                let slivers = cols.div_ceil(NR);
                grow(pb, slivers * kc * NR);
                for (s, out) in pb.chunks_exact_mut(kc * NR).take(slivers).enumerate() {
                    let j0 = j1 + s * NR;
                    pack_b_sliver(b, (pc, kc), (j0, NR.min(n - j0)), out);
                }
            } else {
                grow(pb, kc * NR);
            }
            for i1 in (0..m).step_by(block) {
                let rows = block.min(m - i1);
                // The block's packed rows (all but those read in place).
                let first = i1.max(full);
                if i1 + rows > first {
                    pack_a(&a.0[first * a_rs..], a.1, i1 + rows - first, (pc, kc), pa);
                }
                let a_block = ABlock {
                    in_place: direct.map(|a| (a, (a_rs, a_cs))),
                    packed: pa,
                    first,
                };
                let c = Strip {
                    rows: i1..i1 + rows,
                    cols: j1..j1 + cols,
                    n,
                };
                run_block(&pass, (a_block, (b, pb, panel)), (dst, c));
            }
        }
    }
}

/// One `KC`-deep pass of [`gemm_serial`].
struct Pass {
    pc: usize,
    kc: usize,
    /// Whether C holds sums to add to (accumulating, or a later pass).
    load_c: bool,
    /// Whether each row tile sweeps the slivers ([`SHALLOW`]).
    by_rows: bool,
}

/// A block's A: its rows from `first` packed into `packed`; those above it (full `MR`-row
/// tiles of an f32 A) read in place, with their strides.
struct ABlock<'a> {
    in_place: Option<(&'a [f32], (usize, usize))>,
    packed: &'a [f32],
    first: usize,
}

/// The rows and columns of C a block computes (C's rows `n` apart).
struct Strip {
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    n: usize,
}

/// B of [`run_block`]: the operand, the packing buffer, and whether that holds the strip's
/// slivers already (a panel) or gets each sliver packed as it is reached.
type BSource<'a, 'b, S> = (Operand<'a, S>, &'b mut Vec<f32>, bool);

/// The register tiles of one block of A against the strip's columns of B: sliver by sliver
/// down the rows, or (`by_rows`) row tile by row tile across the slivers.
fn run_block<SB: PackSrc>(
    pass: &Pass,
    (a, (b, pb, panel)): (ABlock<'_>, BSource<'_, '_, SB>),
    (dst, c): (&mut [f32], Strip),
) {
    let Pass { pc, kc, load_c, .. } = *pass;
    let slivers = c.cols.len().div_ceil(NR);
    let mut tile_at = |i0: usize, s: usize, sliver: &[f32]| {
        let (j0, rows) = (c.cols.start + s * NR, MR.min(c.rows.end - i0));
        let cols = NR.min(c.cols.end - j0);
        #[cfg(target_arch = "x86_64")]
        let (tile, a_tile): (Kernel, _) = match a.in_place {
            // SAFETY (offset): rows i0..i0+MR and k pc..pc+kc of A lie inside it (A read in
            // place is one block: i0 and first = full are multiples of MR, so i0 + MR <=
            // first <= m, checked below in debug builds).
            Some((a_full, (a_rs, a_cs))) if i0 < a.first => (
                {
                    debug_assert!(i0 + MR <= a.first);
                    direct_kernel()
                },
                (
                    unsafe { a_full.as_ptr().add(i0 * a_rs + pc * a_cs) },
                    a_rs,
                    a_cs,
                ),
            ),
            // SAFETY (offset): the packed slivers of rows `first..` hold
            // (c.rows.end - first).div_ceil(MR) * kc * MR values.
            _ => (
                kernel_for(rows),
                (
                    unsafe { a.packed.as_ptr().add((i0 - a.first) / MR * kc * MR) },
                    1,
                    MR,
                ),
            ),
        };
        // SAFETY: `available()` (or the AVX2 tile's `sgemm_avx2::available()`) was checked
        // by the caller; A as just described; the sliver holds kc * NR values; C rows
        // i0..i0+rows have `cols` writable columns from j0 (dst holds m * n).
        #[cfg(target_arch = "x86_64")]
        unsafe {
            tile(
                kc,
                a_tile,
                sliver.as_ptr(),
                NR,
                dst.as_mut_ptr().add(i0 * c.n + j0),
                c.n,
                rows,
                masks(cols),
                load_c,
            )
        };
    };
    let tiles = c.rows.clone().step_by(MR);
    if pass.by_rows {
        // (Row sweeps read the panel packed for this pass.)
        debug_assert!(panel && pb.len() >= slivers * kc * NR);
        for i0 in tiles {
            for (s, sliver) in pb.chunks_exact(kc * NR).take(slivers).enumerate() {
                tile_at(i0, s, sliver);
            }
        }
        return;
    }
    for s in 0..slivers {
        let sliver = if panel {
            &pb[s * kc * NR..][..kc * NR]
        } else {
            let j0 = c.cols.start + s * NR;
            pack_b_sliver(b, (pc, kc), (j0, NR.min(c.cols.end - j0)), pb);
            &pb[..kc * NR]
        };
        for i0 in tiles.clone() {
            tile_at(i0, s, sliver);
        }
    }
}

/// `dst[m, n] (+)= lhs[m, k] · rhs[k, n]` with element strides (row, col) per operand; `dst`
/// contiguous, `m, n, k > 0`. The operands are f32, or f16 widened exactly while packed (the
/// same f32 products and sums as widening them first), or f32 rounded to f16 while packed
/// ([`RoundedF16`](super::sgemm_pack::RoundedF16)), or (the AVX2 packers only) bf16 widened
/// or f32 rounded to bf16 ([`RoundedBf16`](super::amx_pack::RoundedBf16)). Callers check
/// `SA::simd()` and `SB::simd()` (for f32: `available()`), or (the AVX2 tile, where there is
/// no AVX-512) `SA::avx2()` and `SB::avx2()`, and the slice extents (as for `gemm_strided`).
/// Shapes that use the kernel's tiles better transposed run so ([`transposed_better`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgemm<SA: PackSrc, SB: PackSrc>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    lhs: &[SA],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[SB],
    (rhs_rs, rhs_cs): (usize, usize),
    accumulate: bool,
    parallel: bool,
) {
    use rayon::prelude::*;
    let b = (rhs, (rhs_rs, rhs_cs));
    let threads = rayon::current_num_threads();
    let transposed = transposed_better((m, n, k));
    // Row blocks of C: whole tiles of the orientation that runs (rows of Cᵀ's columns).
    let unit = if transposed { NR } else { MR };
    if parallel && threads > 1 && m >= 2 * unit && m * n * k >= 1 << 20 {
        // Row blocks across threads, each packing its own A into its thread's buffers.
        let rows = m.div_ceil(threads).next_multiple_of(unit);
        dst[..m * n]
            .par_chunks_mut(rows * n)
            .enumerate()
            .for_each(|(i, d)| {
                let a = (&lhs[i * rows * lhs_rs..], (lhs_rs, lhs_cs));
                let shape = (d.len() / n, n, k);
                with_scratch(|bufs| gemm_block(shape, d, (a, b), (accumulate, transposed), bufs));
            });
    } else {
        let a = (lhs, (lhs_rs, lhs_cs));
        with_scratch(|bufs| gemm_block((m, n, k), dst, (a, b), (accumulate, transposed), bufs));
    }
}

/// Runs `f` with this thread's packing buffers ([`SCRATCH`]), taken out for the call (a nested
/// call on this thread, e.g. from a job rayon runs while this one waits, simply finds empty
/// ones) and put back after: no allocation, zero fill or page faults per call (fresh buffers
/// per parallel call were 3 % of an f16 training step at 8 × 64 px, in `memset`).
fn with_scratch(f: impl FnOnce((&mut Vec<f32>, &mut Vec<f32>))) {
    let (mut pa, mut pb) = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    f((&mut pa, &mut pb));
    SCRATCH.with(|s| *s.borrow_mut() = (pa, pb));
}

/// An operand and its element strides (row, column).
type Operand<'a, S> = (&'a [S], (usize, usize));

/// `dst[m × n] (+)= A · B` serially, as is or (`transposed`) as `Cᵀ = Bᵀ · Aᵀ` into a scratch
/// `Cᵀ` (holding C's values first when accumulating) transposed back into `dst`.
fn gemm_block<SA: PackSrc, SB: PackSrc>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    (a, b): (Operand<'_, SA>, Operand<'_, SB>),
    (accumulate, transposed): (bool, bool),
    bufs: (&mut Vec<f32>, &mut Vec<f32>),
) {
    if !transposed {
        gemm_serial((m, n, k), dst, a, b, accumulate, bufs);
        return;
    }
    // (Should the host cache's allocation fail, a plain one.)
    let mut t = crate::alloc::for_overwrite::<f32>(n * m).unwrap_or_else(|_| vec![0.0; n * m]);
    if accumulate {
        transpose(&dst[..m * n], (m, n), &mut t);
    }
    let (a_t, b_t) = ((b.0, (b.1 .1, b.1 .0)), (a.0, (a.1 .1, a.1 .0)));
    gemm_serial((n, m, k), &mut t, a_t, b_t, accumulate, bufs);
    transpose(&t, (n, m), &mut dst[..m * n]);
    crate::alloc::recycle(t);
}

/// `dst[j × rows + i] = src[i × cols + j]`: the transpose of a row-major `rows × cols` matrix,
/// in 16 × 16 blocks through registers where the CPU has AVX-512.
fn transpose(src: &[f32], (rows, cols): (usize, usize), dst: &mut [f32]) {
    assert!(src.len() >= rows * cols && dst.len() >= rows * cols);
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: AVX-512F was detected; both extents were just checked.
        unsafe { transpose_avx512(src, (rows, cols), dst) };
        return;
    }
    for (i, row) in src.chunks_exact(cols.max(1)).take(rows).enumerate() {
        for (j, &v) in row.iter().enumerate() {
            dst[j * rows + i] = v;
        }
    }
}

/// [`transpose`] by 16 × 16 blocks: up to 16 rows of up to 16 values loaded (masked at the
/// edges; missing rows are zero vectors), transposed in registers, stored as up to 16 rows.
///
/// # Safety
/// The CPU has AVX-512F; `src` and `dst` hold `rows · cols` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_avx512(src: &[f32], (rows, cols): (usize, usize), dst: &mut [f32]) {
    use super::skinny::mask16 as mask;
    use std::arch::x86_64::*;
    for i0 in (0..rows).step_by(16) {
        let h = (rows - i0).min(16);
        for j0 in (0..cols).step_by(16) {
            let w = (cols - j0).min(16);
            let mut r = [_mm512_setzero_ps(); 16];
            for (i, v) in r.iter_mut().enumerate().take(h) {
                // SAFETY: row i0 + i < rows, columns j0..j0 + w < cols of `src`.
                *v = unsafe {
                    _mm512_maskz_loadu_ps(mask(w), src.as_ptr().add((i0 + i) * cols + j0))
                };
            }
            let t = super::sgemm_pack::transpose16(r);
            for (j, v) in t.iter().enumerate().take(w) {
                // SAFETY: row j0 + j < cols, columns i0..i0 + h < rows of `dst`.
                unsafe {
                    _mm512_mask_storeu_ps(dst.as_mut_ptr().add((j0 + j) * rows + i0), mask(h), *v)
                };
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    thread_local! {
        /// Turns the AVX-512 kernel and packers off on this test thread ([`without_avx512`]).
        pub(super) static NO_AVX512: std::cell::Cell<bool> =
            const { std::cell::Cell::new(false) };
    }

    /// Runs `f` on this thread as on a CPU without AVX-512 (the AVX2 tile and packers, where
    /// the CPU has AVX2).
    pub(crate) fn without_avx512(f: impl FnOnce()) {
        NO_AVX512.set(true);
        f();
        NO_AVX512.set(false);
    }

    /// Runs `check` as the CPU is, and again without AVX-512 where it has it (so that an
    /// AVX-512 machine tests the AVX2 path too — in its serial products: rayon's worker
    /// threads keep their own view, and run their tasks' packing and tiles consistently).
    fn as_is_and_without_avx512(check: impl Fn()) {
        check();
        if available() {
            without_avx512(check);
        }
    }

    /// Odd sizes across every blocking edge, both operand layouts, overwrite and accumulate,
    /// against an f64 reference within the GEMM bound (on the AVX-512 tile, else the AVX2 one:
    /// full and partial sub-tiles, A read in place).
    #[test]
    fn matches_f64_reference_at_odd_sizes() {
        as_is_and_without_avx512(matches_f64_reference_at_odd_sizes_here);
    }

    fn matches_f64_reference_at_odd_sizes_here() {
        if !available() && !super::super::sgemm_avx2::available() {
            println!("skipped: this CPU has neither AVX-512F nor AVX2/FMA/F16C");
            return;
        }
        super::super::gemm_check::check_against_f64(
            &[
                (1, 1, 1),
                (13, 33, 7),
                (37, 65, 300),
                (200, 1030, 513),
                (12, 32, 256),
                (37, 32, 300),
                (25, 7, 513),
                (48, 29, 600),
                (100, 32, 400),
                // (Run transposed: narrower than a tile, or a last tile mostly masked off.)
                (64, 17, 40),
                (200, 98, 300),
                (45, 20, 9),
            ],
            super::super::gemm_check::uniform(0x2545_F491_4F6C_DD1D),
            f64::from,
            // (Always parallel: sgemm's serial path is the parallel one's per-thread body.)
            &|shape, c, a, sa, b, sb, accumulate, _| {
                sgemm(shape, c, a, sa, b, sb, accumulate, true)
            },
        );
    }

    /// The serial driver's blocking (`gemm_serial`), whatever the thread count: A in blocks of
    /// `MC` rows over panels of B (several panels: 300 × 600 × 300), one sliver wide (A read
    /// in place where f32: 430 × 32 × 300), shallow passes with row tiles sweeping the slivers
    /// (the last 44 deep of 401 × 64 × 300; 200 × 2100 × 40 over two panels; 1100 × 100 × 60
    /// over six blocks of A), against the f64 reference, for f32 and f16 operands (f16: A
    /// always packed).
    #[test]
    fn blocked_passes_match_f64_reference() {
        as_is_and_without_avx512(blocked_passes_match_f64_reference_here);
    }

    fn blocked_passes_match_f64_reference_here() {
        use half::f16;
        if !available() && !super::super::sgemm_avx2::available() {
            println!("skipped: this CPU has neither AVX-512F nor AVX2/FMA/F16C");
            return;
        }
        let shapes = [
            (300, 600, 300),
            (430, 32, 300),
            (401, 64, 300),
            (200, 2100, 40),
            (1100, 100, 60),
        ];
        fn serial<S: PackSrc>(
            shape: (usize, usize, usize),
            c: &mut [f32],
            (a, sa): (&[S], (usize, usize)),
            (b, sb): (&[S], (usize, usize)),
            accumulate: bool,
        ) {
            let (mut pa, mut pb) = (Vec::new(), Vec::new());
            gemm_serial(shape, c, (a, sa), (b, sb), accumulate, (&mut pa, &mut pb));
        }
        let mut rnd = super::super::gemm_check::uniform(0x5DEE_CE66_D1CE_4E5B);
        super::super::gemm_check::check_against_f64(
            &shapes,
            &mut rnd,
            f64::from,
            &|shape, c, a, sa, b, sb, accumulate, _| serial(shape, c, (a, sa), (b, sb), accumulate),
        );
        if f16::simd() || f16::avx2() {
            super::super::gemm_check::check_against_f64(
                &shapes,
                || f16::from_f32(rnd()),
                f16::to_f64,
                &|shape, c, a, sa, b, sb, accumulate, _| {
                    serial(shape, c, (a, sa), (b, sb), accumulate)
                },
            );
        }
    }

    /// The orientation choice: narrow products and mostly masked last tiles transpose, full
    /// tiles and short k do not.
    #[test]
    fn transposes_where_tiles_are_used_better() {
        assert!(transposed_better((512, 98, 4608)));
        assert!(transposed_better((256, 16, 2304)));
        assert!(transposed_better((4608, 98, 512)));
        assert!(!transposed_better((256, 392, 2304)));
        assert!(!transposed_better((512, 128, 4608)));
        assert!(!transposed_better((20, 98, 4608)));
        assert!(!transposed_better((20, 10, 4608)));
    }

    /// Transposed and as-is runs give the same bits (the same products summed in the same
    /// order), overwriting and accumulating, for strided operands of both layouts.
    #[test]
    fn transposed_run_gives_the_same_bits() {
        as_is_and_without_avx512(transposed_run_gives_the_same_bits_here);
    }

    fn transposed_run_gives_the_same_bits_here() {
        if !available() && !super::super::sgemm_avx2::available() {
            println!("skipped: this CPU has neither AVX-512F nor AVX2/FMA/F16C");
            return;
        }
        let mut rnd = super::super::gemm_check::uniform(0x1234_5678_9ABC_DEF1);
        for (m, n, k) in [(37, 45, 300), (64, 98, 513), (13, 33, 7)] {
            let a: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rnd()).collect();
            let c0: Vec<f32> = (0..m * n).map(|_| rnd()).collect();
            for (sa, sb) in [((k, 1), (n, 1)), ((1, m), (1, k))] {
                for accumulate in [false, true] {
                    let run = |transposed: bool| {
                        let mut c = c0.clone();
                        let (mut pa, mut pb) = (Vec::new(), Vec::new());
                        let ops = ((&a[..], sa), (&b[..], sb));
                        let how = (accumulate, transposed);
                        gemm_block((m, n, k), &mut c, ops, how, (&mut pa, &mut pb));
                        c.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                    };
                    assert_eq!(run(false), run(true), "({m},{n},{k}) {sa:?} {accumulate}");
                }
            }
        }
    }

    /// `transpose` at odd sizes across the 16 × 16 block edges, against its definition.
    #[test]
    fn transpose_matches_definition() {
        let mut rnd = super::super::gemm_check::uniform(0x0F0F_1234_AAAA_5555);
        for (rows, cols) in [(1, 1), (16, 16), (17, 33), (98, 5), (3, 40)] {
            let src: Vec<f32> = (0..rows * cols).map(|_| rnd()).collect();
            let mut dst = vec![f32::NAN; rows * cols];
            transpose(&src, (rows, cols), &mut dst);
            for i in 0..rows {
                for j in 0..cols {
                    assert_eq!(dst[j * rows + i].to_bits(), src[i * cols + j].to_bits());
                }
            }
        }
    }

    /// f16 operands, widened while packed, against the f64 reference of the f16 values; and
    /// (on the AVX2 packers) bf16 ones.
    #[test]
    fn half_operands_match_f64_reference() {
        as_is_and_without_avx512(half_operands_match_f64_reference_here);
    }

    fn half_operands_match_f64_reference_here() {
        use half::{bf16, f16};
        let shapes = [(1, 1, 1), (13, 33, 7), (37, 65, 300), (64, 96, 513)];
        let mut rnd = super::super::gemm_check::uniform(0x6C07_8965_2F4A_7C15);
        if f16::simd() || f16::avx2() {
            super::super::gemm_check::check_against_f64(
                &shapes,
                || f16::from_f32(rnd()),
                f16::to_f64,
                &|shape, c, a, sa, b, sb, accumulate, par| {
                    sgemm(shape, c, a, sa, b, sb, accumulate, par)
                },
            );
        } else {
            println!("skipped f16: this CPU has neither AVX-512F/BW nor AVX2 (f16 GEMMs widen)");
        }
        if bf16::avx2() {
            super::super::gemm_check::check_against_f64(
                &shapes,
                || bf16::from_f32(rnd() * 1e3),
                bf16::to_f64,
                &|shape, c, a, sa, b, sb, accumulate, par| {
                    sgemm(shape, c, a, sa, b, sb, accumulate, par)
                },
            );
        } else {
            println!("skipped bf16: this CPU has no AVX2 (bf16 GEMMs run on bf16 units or widen)");
        }
    }

    /// `gemm_f16` and `gemm_bf16` at shapes the blocked kernel does not serve directly:
    /// products at most 8 columns wide run `skinny`, others narrower than a register tile run
    /// transposed (in parallel over blocks of A's rows, or serially), and the smallest ones
    /// widen for the crate; against the f64 reference.
    #[test]
    fn narrow_half_products_match_f64_reference() {
        as_is_and_without_avx512(narrow_half_products_match_f64_reference_here);
    }

    fn narrow_half_products_match_f64_reference_here() {
        use half::f16;
        let mut rnd = super::super::gemm_check::uniform(0x3C6E_F372_FE94_F82B);
        let shapes = [
            (100, 4, 300),
            (33, 17, 70),
            (512, 1, 40),
            (40, 31, 9),
            (20, 5, 33),
            (20, 12, 33),
        ];
        super::super::gemm_check::check_against_f64(
            &shapes,
            || f16::from_f32(rnd()),
            f16::to_f64,
            &|shape, c, a, sa, b, sb, accumulate, par| {
                super::super::matmul::gemm_f16(shape, c, a, sa, b, sb, accumulate, par)
            },
        );
        // (On AMX or AVX512-BF16, whose units flush values below 2^-126: none is drawn.)
        super::super::gemm_check::check_against_f64(
            &shapes,
            || half::bf16::from_f32(rnd()),
            half::bf16::to_f64,
            &|shape, c, a, sa, b, sb, accumulate, par| {
                super::super::matmul::gemm_bf16(shape, c, a, sa, b, sb, accumulate, par)
            },
        );
    }
}
