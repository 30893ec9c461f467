//! Packing for the AMX bf16 GEMM (`amx::gemm_bf16`): A into 16-row × 32-`k` tiles, B into
//! 16-pair-row × 16-column tiles in the pairwise (VNNI) order `TDPBF16PS` reads. Packing only
//! moves values: the tiles hold exactly the operands' elements, zeros past the edges, and every
//! element of `out` is written (the caller does not zero it).
//!
//! Full tiles of the four layouts convolutions use move through AVX-512 registers (element by
//! element, the transposed layouts took 14 % of a bf16 training step, more than the tile
//! multiplications): two rows of 16 bf16 interleave into 16 pairs (32-bit lanes), and the
//! transposed layouts then transpose 16 × 16 pairs with `sgemm_pack::transpose16`. Edge tiles
//! keep the element-wise loops.

use super::amx::{TILE, TK, TM, TN};
use half::bf16;
use rayon::prelude::*;

/// Packs `A [m × k]` (element `(r, c)` at `a[r*rs + c*cs]`) into tiles: row sliver `s`
/// (16 rows), k block `b` at `((s * kb + b) * TILE)`, row-major 16 × 32, zero-padded. `out`
/// holds a whole number of slivers of `kb` tiles, at least enough for `m` rows.
pub(crate) fn pack_a(
    a: &[bf16],
    (rs, cs): (usize, usize),
    (m, k): (usize, usize),
    out: &mut [bf16],
) {
    let kb = k.div_ceil(TK);
    let fast = super::convert::avx512();
    out.par_chunks_mut(kb * TILE)
        .enumerate()
        .for_each(|(s, sliver)| {
            for (blk, tile) in sliver.chunks_exact_mut(TILE).enumerate() {
                let (r0, c0) = (s * TM, blk * TK);
                let (rows, cols) = (m.saturating_sub(r0).min(TM), (k - c0).min(TK));
                let full = rows == TM && cols == TK;
                let base = r0 * rs + c0 * cs;
                #[cfg(target_arch = "x86_64")]
                if full && fast && (cs == 1 || rs == 1) {
                    // SAFETY: AVX-512F/BW detected; a full tile's 16 rows × 32 columns lie
                    // inside `a` (the caller's extent check), `tile` holds TILE values.
                    unsafe {
                        if cs == 1 {
                            copy_a_rows(&a[base..], rs, tile)
                        } else {
                            transpose_a(&a[base..], cs, tile)
                        }
                    };
                    continue;
                }
                for (i, row) in tile.chunks_exact_mut(TK).enumerate() {
                    if i >= rows {
                        row.fill(bf16::ZERO);
                        continue;
                    }
                    for (j, v) in row.iter_mut().enumerate() {
                        *v = if j < cols {
                            a[base + i * rs + j * cs]
                        } else {
                            bf16::ZERO
                        };
                    }
                }
            }
        });
}

/// Packs `B [k × n]` (element `(r, c)` at `b[r*rs + c*cs]`) into tiles: column sliver `t`
/// (16 columns), k block `b` at `((t * kb + b) * TILE)`; inside, pair row `p` holds
/// `(B[2p][c], B[2p+1][c])` for the 16 columns (the order `TDPBF16PS` reads), zero-padded.
/// `out` holds a whole number of slivers of `kb` tiles (slivers past `n`: all zero).
pub(crate) fn pack_b(
    b: &[bf16],
    (rs, cs): (usize, usize),
    (k, n): (usize, usize),
    out: &mut [bf16],
) {
    let kb = k.div_ceil(TK);
    let fast = super::convert::avx512();
    out.par_chunks_mut(kb * TILE)
        .enumerate()
        .for_each(|(t, sliver)| {
            let (c0, cols) = (t * TN, n.saturating_sub(t * TN).min(TN));
            for (blk, tile) in sliver.chunks_exact_mut(TILE).enumerate() {
                let r0 = blk * TK;
                let rows = (k - r0).min(TK);
                let base = r0 * rs + c0 * cs;
                #[cfg(target_arch = "x86_64")]
                if rows == TK && cols == TN && fast && (cs == 1 || rs == 1) {
                    // SAFETY: AVX-512F/BW detected; a full tile's 32 rows × 16 columns lie
                    // inside `b` (the caller's extent check), `tile` holds TILE values.
                    unsafe {
                        if cs == 1 {
                            interleave_b_rows(&b[base..], rs, tile)
                        } else {
                            transpose_b(&b[base..], cs, tile)
                        }
                    };
                    continue;
                }
                for (q, v) in tile.iter_mut().enumerate() {
                    // Pair row q / 32, column (q % 32) / 2, row 2·(q / 32) + q % 2 of the block.
                    let (r, j) = (2 * (q / (2 * TN)) + q % 2, (q % (2 * TN)) / 2);
                    *v = if r < rows && j < cols {
                        b[base + r * rs + j * cs]
                    } else {
                        bf16::ZERO
                    };
                }
            }
        });
}

/// 16 bf16 at `even` and 16 at `odd` as 16 pairs `(even[i], odd[i])`, one per 32-bit lane
/// (the first of a pair in the low half: its lower address).
///
/// # Safety
/// The CPU has AVX-512F/BW; 16 values are readable at each pointer.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn pairs(even: *const bf16, odd: *const bf16) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    // SAFETY: 16 readable bf16 (32 bytes) at each pointer (unaligned loads).
    unsafe {
        let e = _mm512_cvtepu16_epi32(_mm256_loadu_si256(even.cast()));
        let o = _mm512_cvtepu16_epi32(_mm256_loadu_si256(odd.cast()));
        _mm512_or_si512(e, _mm512_slli_epi32::<16>(o))
    }
}

/// Tile row `i` = 32 contiguous values at `a[i * rs..]` (row-major A).
///
/// # Safety
/// The CPU has AVX-512F/BW; `a` holds `15 * rs + 32` values, `tile` TILE.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn copy_a_rows(a: &[bf16], rs: usize, tile: &mut [bf16]) {
    use std::arch::x86_64::*;
    debug_assert!(a.len() >= 15 * rs + TK && tile.len() >= TILE);
    for i in 0..TM {
        // SAFETY: row i's 32 values (64 bytes) lie inside `a`; tile row i inside `tile`.
        unsafe {
            let v = _mm512_loadu_si512(a.as_ptr().add(i * rs).cast());
            _mm512_storeu_si512(tile.as_mut_ptr().add(i * TK).cast(), v);
        }
    }
}

/// Tile row `i` = `(a[i + 2q·cs], a[i + (2q+1)·cs])` for pairs `q < 16` (column-major A: the
/// transposed weight of the input gradient): 16 pair vectors, transposed.
///
/// # Safety
/// The CPU has AVX-512F/BW; `a` holds `31 * cs + 16` values, `tile` TILE.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn transpose_a(a: &[bf16], cs: usize, tile: &mut [bf16]) {
    use std::arch::x86_64::*;
    debug_assert!(a.len() >= 31 * cs + TM && tile.len() >= TILE);
    let p = a.as_ptr();
    // SAFETY: columns 0..32 hold 16 values each inside `a`.
    let v: [__m512; 16] = std::array::from_fn(|q| unsafe {
        _mm512_castsi512_ps(pairs(p.add(2 * q * cs), p.add((2 * q + 1) * cs)))
    });
    for (i, row) in super::sgemm_pack::transpose16(v).iter().enumerate() {
        // SAFETY: tile row i (64 bytes) lies inside `tile`.
        unsafe { _mm512_storeu_ps(tile.as_mut_ptr().add(i * TK).cast(), *row) };
    }
}

/// Pair row `p` = rows `2p` and `2p + 1` of a row-major B interleaved (16 columns).
///
/// # Safety
/// The CPU has AVX-512F/BW; `b` holds `31 * rs + 16` values, `tile` TILE.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn interleave_b_rows(b: &[bf16], rs: usize, tile: &mut [bf16]) {
    use std::arch::x86_64::*;
    debug_assert!(b.len() >= 31 * rs + TN && tile.len() >= TILE);
    let s = b.as_ptr();
    for p in 0..TK / 2 {
        // SAFETY: rows 2p and 2p + 1 hold 16 values each inside `b`; pair row p inside `tile`.
        unsafe {
            let v = pairs(s.add(2 * p * rs), s.add((2 * p + 1) * rs));
            _mm512_storeu_si512(tile.as_mut_ptr().add(p * 2 * TN).cast(), v);
        }
    }
}

/// Pair row `p`, column `j` = the adjacent pair at `b[j·cs + 2p]` (column-major B: the weight
/// gradient's im2col matrix read transposed): each column's 32 values are 16 pairs, and the
/// 16 columns' pair vectors are transposed.
///
/// # Safety
/// The CPU has AVX-512F/BW; `b` holds `15 * cs + 32` values, `tile` TILE.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn transpose_b(b: &[bf16], cs: usize, tile: &mut [bf16]) {
    use std::arch::x86_64::*;
    debug_assert!(b.len() >= 15 * cs + TK && tile.len() >= TILE);
    let s = b.as_ptr();
    // SAFETY: column j's 32 values (64 bytes) lie inside `b`.
    let v: [__m512; 16] = std::array::from_fn(|j| unsafe { _mm512_loadu_ps(s.add(j * cs).cast()) });
    for (p, row) in super::sgemm_pack::transpose16(v).iter().enumerate() {
        // SAFETY: pair row p (64 bytes) lies inside `tile`.
        unsafe { _mm512_storeu_ps(tile.as_mut_ptr().add(p * 2 * TN).cast(), *row) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both packers against their element-wise definition in every layout, at sizes with full
    /// and edge tiles, into buffers pre-filled with NaN (every element must be written).
    #[test]
    fn packs_equal_their_definition() {
        let mut draw = super::super::gemm_check::uniform(0x5851_F42D_4C95_7F2D);
        let (rows, cols) = (50, 97);
        let data: Vec<bf16> = (0..2 * rows * cols)
            .map(|_| bf16::from_f32(draw()))
            .collect();
        for (rs, cs) in [(cols, 1), (1, rows), (2 * cols, 2)] {
            let at = |r: usize, c: usize| data[r * rs + c * cs];
            for (m, k) in [(1usize, 1usize), (16, 32), (33, 64), (50, 97), (17, 31)] {
                let kb = k.div_ceil(TK);
                let mut out = vec![bf16::NAN; 2 * m.div_ceil(2 * TM) * kb * TILE];
                pack_a(&data, (rs, cs), (m, k), &mut out);
                for (q, v) in out.iter().enumerate() {
                    let (s, b, i, j) = (q / (kb * TILE), q / TILE % kb, q % TILE / TK, q % TK);
                    let (r, c) = (s * TM + i, b * TK + j);
                    let want = if r < m && c < k { at(r, c) } else { bf16::ZERO };
                    assert_eq!(v.to_bits(), want.to_bits(), "A ({rs},{cs}) {m}x{k} at {q}");
                }
                // The same extents as B [k × n] with n = m.
                let (kk, n) = (m, k);
                let kb = kk.div_ceil(TK);
                let mut out = vec![bf16::NAN; 2 * n.div_ceil(2 * TN) * kb * TILE];
                pack_b(&data, (rs, cs), (kk, n), &mut out);
                for (q, v) in out.iter().enumerate() {
                    let (t, b, w) = (q / (kb * TILE), q / TILE % kb, q % TILE);
                    let (r, c) = (
                        b * TK + 2 * (w / (2 * TN)) + w % 2,
                        t * TN + w % (2 * TN) / 2,
                    );
                    let want = if r < kk && c < n {
                        at(r, c)
                    } else {
                        bf16::ZERO
                    };
                    assert_eq!(v.to_bits(), want.to_bits(), "B ({rs},{cs}) {kk}x{n} at {q}");
                }
            }
        }
    }
}
