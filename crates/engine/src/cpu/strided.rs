//! Every other element of a slice: the row copy of a stride-2 convolution's im2col (the
//! stem's 7 × 7 and every downsampling layer), and the running maximum of a stride-2 max
//! pool's tap (the stem's 3 × 3 pool). Element by element the copy was 2 % of a 224-px f32
//! training step and the pool 1.5 %; with AVX-512 each 16 (4-byte) or 32 (2-byte) elements
//! are one pair of masked loads and one two-source permute. The copy moves bits only; the
//! maximum compares and selects exactly as the element-wise loop does.

/// `dst[i] = src[2·i]` for every `i < dst.len()`; `src` holds at least `2·dst.len() − 1`
/// elements (panics otherwise).
pub(crate) fn copy_even<T: bytemuck::Pod>(dst: &mut [T], src: &[T]) {
    let n = dst.len();
    assert!(
        n == 0 || src.len() >= 2 * n - 1,
        "copy_even: source too short"
    );
    #[cfg(target_arch = "x86_64")]
    if n > 0 && super::convert::avx512() {
        match std::mem::size_of::<T>() {
            4 => {
                let (d, s) = (
                    bytemuck::cast_slice_mut::<T, u32>(dst),
                    bytemuck::cast_slice::<T, u32>(src),
                );
                // SAFETY: AVX-512F/BW were detected; the extents were checked above.
                unsafe { even_u32(d, s) };
                return;
            }
            2 => {
                let (d, s) = (
                    bytemuck::cast_slice_mut::<T, u16>(dst),
                    bytemuck::cast_slice::<T, u16>(src),
                );
                // SAFETY: as above.
                unsafe { even_u16(d, s) };
                return;
            }
            _ => {}
        }
    }
    for (o, v) in dst.iter_mut().zip(src.iter().step_by(2)) {
        *o = *v;
    }
}

/// One tap of a stride-2 max pool over an output row: for every `j < best.len()`, with
/// `v = row[2·j]`, where `v > best[j]` or `v` is NaN (PyTorch's `val > maxval || isnan(val)`),
/// `best[j] = v` and `arg[j] = base + 2·j`. `row` holds at least `2·best.len() − 1` elements
/// and `arg` as many as `best` (panics otherwise).
pub(crate) fn max_even<T: num_traits::Float + 'static>(
    best: &mut [T],
    arg: &mut [i64],
    row: &[T],
    base: i64,
) {
    let n = best.len();
    assert!(
        arg.len() == n,
        "max_even: {} indices for {n} outputs",
        arg.len()
    );
    assert!(n == 0 || row.len() >= 2 * n - 1, "max_even: row too short");
    #[cfg(target_arch = "x86_64")]
    if n > 0
        && std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
        && super::convert::avx512()
    {
        // SAFETY: `T` is f32 (same TypeId): the same slices retyped.
        let (best, row) = unsafe {
            (
                std::slice::from_raw_parts_mut(best.as_mut_ptr().cast::<f32>(), n),
                std::slice::from_raw_parts(row.as_ptr().cast::<f32>(), row.len()),
            )
        };
        // SAFETY: AVX-512F was detected; the extents were checked above.
        unsafe { max_even_f32(best, arg, row, base) };
        return;
    }
    // (Branch-free selects, compiled for the CPU's widest vectors. The loop stays scalar —
    // the stride-2 reads with i64 indices do not vectorize — but without the branches of
    // `||` it ran in ~55 % of the samples on Zen 3: 70 → 37–43 per five 224-px fp32 steps,
    // where the pool was 3 % of the step.)
    let row = &row[..(2 * n).saturating_sub(1)];
    super::convert::with_wide_vectors(
        #[inline(always)]
        || {
            let outs = best.iter_mut().zip(arg.iter_mut());
            for (j, ((b, a), pair)) in outs.zip(row.chunks(2)).enumerate() {
                let v = pair[0];
                // (`|`, not `||`: no branch.)
                let take = (v > *b) | v.is_nan();
                *b = if take { v } else { *b };
                *a = if take { base + 2 * j as i64 } else { *a };
            }
        },
    )
}

/// [`max_even`] for f32, 16 outputs per step: the taps gathered by a two-source permute,
/// compared (`>` ordered, or the tap unordered with itself), values and the two halves of the
/// i64 indices blended under that mask.
///
/// # Safety
/// The CPU has AVX-512F; `row.len() ≥ 2·best.len() − 1`, `arg.len() == best.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn max_even_f32(best: &mut [f32], arg: &mut [i64], row: &[f32], base: i64) {
    use std::arch::x86_64::*;
    let idx = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let step = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14);
    for j0 in (0..best.len()).step_by(16) {
        let cnt = (best.len() - j0).min(16);
        let need = 2 * cnt - 1;
        let (m0, m1) = super::sgemm::masks(need);
        let live = super::skinny::mask16(cnt);
        // SAFETY: the masked lanes lie inside `row` (2·j0 + need ≤ row.len()), `best` and
        // `arg` (j0 + cnt ≤ best.len() == arg.len()).
        unsafe {
            let p = row.as_ptr().add(2 * j0);
            let a = _mm512_maskz_loadu_ps(m0, p);
            let b = _mm512_maskz_loadu_ps(m1, p.add(16));
            let v = _mm512_permutex2var_ps(a, idx, b);
            let bp = best.as_mut_ptr().add(j0);
            let old = _mm512_maskz_loadu_ps(live, bp);
            let take = (_mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, old)
                | _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v))
                & live;
            _mm512_mask_storeu_ps(bp, take, v);
            let first = _mm512_set1_epi64(base + 2 * j0 as i64);
            let ap = arg.as_mut_ptr().add(j0);
            let lo = _mm512_add_epi64(first, step);
            let hi = _mm512_add_epi64(lo, _mm512_set1_epi64(16));
            _mm512_mask_storeu_epi64(ap, take as u8, lo);
            _mm512_mask_storeu_epi64(ap.add(8), (take >> 8) as u8, hi);
        }
    }
}

/// The lane mask of the first `n` (≤ 64) of two 32-lane vectors' lanes, low vector first.
#[cfg(target_arch = "x86_64")]
fn masks32(n: usize) -> (u32, u32) {
    let half = |n: usize| {
        let (lo, hi) = super::sgemm::masks(n);
        u32::from(lo) | u32::from(hi) << 16
    };
    (half(n), half(n.saturating_sub(32)))
}

/// [`copy_even`] of 4-byte elements, 16 outputs per step.
///
/// # Safety
/// The CPU has AVX-512F; `src.len() ≥ 2·dst.len() − 1`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn even_u32(dst: &mut [u32], src: &[u32]) {
    use std::arch::x86_64::*;
    let idx = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    for i0 in (0..dst.len()).step_by(16) {
        let out = (dst.len() - i0).min(16);
        // Source elements 2·i0 .. 2·i0 + 2·out − 1 are read (the last odd one is not needed).
        let need = 2 * out - 1;
        let (m0, m1) = super::sgemm::masks(need);
        // SAFETY: the masked lanes lie inside `src` (2·i0 + need ≤ src.len()), the stored
        // ones inside `dst`.
        unsafe {
            let p = src.as_ptr().add(2 * i0).cast::<i32>();
            let a = _mm512_maskz_loadu_epi32(m0, p);
            let b = _mm512_maskz_loadu_epi32(m1, p.wrapping_add(16));
            let v = _mm512_permutex2var_epi32(a, idx, b);
            let q = dst.as_mut_ptr().add(i0).cast::<i32>();
            _mm512_mask_storeu_epi32(q, super::skinny::mask16(out), v);
        }
    }
}

/// [`copy_even`] of 2-byte elements, 32 outputs per step.
///
/// # Safety
/// The CPU has AVX-512F and BW; `src.len() ≥ 2·dst.len() − 1`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn even_u16(dst: &mut [u16], src: &[u16]) {
    use std::arch::x86_64::*;
    let even: [i16; 32] = std::array::from_fn(|i| 2 * i as i16);
    // SAFETY: `even` holds 64 bytes.
    let idx = unsafe { _mm512_loadu_si512(even.as_ptr().cast()) };
    for i0 in (0..dst.len()).step_by(32) {
        let out = (dst.len() - i0).min(32);
        let need = 2 * out - 1;
        let (m0, m1) = masks32(need);
        // SAFETY: as in `even_u32`.
        unsafe {
            let p = src.as_ptr().add(2 * i0).cast::<i16>();
            let a = _mm512_maskz_loadu_epi16(m0, p);
            let b = _mm512_maskz_loadu_epi16(m1, p.wrapping_add(32));
            let v = _mm512_permutex2var_epi16(a, idx, b);
            let q = dst.as_mut_ptr().add(i0).cast::<i16>();
            _mm512_mask_storeu_epi16(q, masks32(out).0, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every output length up to 70 (both vector widths' tails), with the shortest legal
    /// source and a longer one, for 2-, 4- and 8-byte elements, against the definition.
    #[test]
    fn copies_every_other_element() {
        for n in 0..70usize {
            for extra in [0usize, 1, 5] {
                let len = (2 * n).saturating_sub(1) + extra;
                let s32: Vec<u32> = (0..len as u32)
                    .map(|i| i.wrapping_mul(2654435761))
                    .collect();
                let mut d32 = vec![7u32; n];
                copy_even(&mut d32, &s32);
                let s16: Vec<u16> = s32.iter().map(|&v| (v >> 7) as u16).collect();
                let mut d16 = vec![7u16; n];
                copy_even(&mut d16, &s16);
                let s64: Vec<u64> = s32.iter().map(|&v| u64::from(v) << 3).collect();
                let mut d64 = vec![7u64; n];
                copy_even(&mut d64, &s64);
                for i in 0..n {
                    assert_eq!(d32[i], s32[2 * i], "{n} {extra} {i}");
                    assert_eq!(d16[i], s16[2 * i], "{n} {extra} {i}");
                    assert_eq!(d64[i], s64[2 * i], "{n} {extra} {i}");
                }
            }
        }
    }

    /// Every length up to 70, f32 (AVX-512, else the portable loop) against f64 (the portable
    /// loop; both compiled for the widest vectors) on the same values, and f64 against the rule
    /// written out: equal maxima and indices, with NaNs in the row and in the running maximum,
    /// ties (the earlier tap kept) and infinities.
    #[test]
    fn max_of_every_other_element_matches_the_loop() {
        let special = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.25, -0.0];
        for n in 0..70usize {
            let len = (2 * n).saturating_sub(1) + n % 3;
            let row: Vec<f32> = (0..len)
                .map(|i| {
                    if i % 11 == 3 {
                        special[i % 5]
                    } else {
                        ((i * 7) % 13) as f32 * 0.25
                    }
                })
                .collect();
            let best0: Vec<f32> = (0..n)
                .map(|j| {
                    if j % 9 == 4 {
                        f32::NAN
                    } else {
                        ((j * 5) % 7) as f32 * 0.25
                    }
                })
                .collect();
            let arg0: Vec<i64> = (0..n as i64).map(|j| -1 - j).collect();
            let (mut best, mut arg) = (best0.clone(), arg0.clone());
            max_even(&mut best, &mut arg, &row, 100);
            let mut best64: Vec<f64> = best0.iter().map(|&v| f64::from(v)).collect();
            let mut arg64 = arg0.clone();
            let row64: Vec<f64> = row.iter().map(|&v| f64::from(v)).collect();
            max_even(&mut best64, &mut arg64, &row64, 100);
            // The rule written out: a later tap replaces when larger or NaN.
            for j in 0..n {
                let (v, b) = (row64[2 * j], f64::from(best0[j]));
                let take = v > b || v.is_nan();
                let (want, at) = if take {
                    (v, 100 + 2 * j as i64)
                } else {
                    (b, arg0[j])
                };
                let got = best64[j];
                assert!(got == want || (got.is_nan() && want.is_nan()), "{n} {j}");
                assert_eq!(arg64[j], at, "{n} {j}");
            }
            for j in 0..n {
                let (got, want) = (f64::from(best[j]), best64[j]);
                assert!(
                    got == want || (got.is_nan() && want.is_nan()),
                    "{n} {j}: {got} vs {want}"
                );
                assert_eq!(arg[j], arg64[j], "{n} {j}");
            }
        }
    }

    #[test]
    #[should_panic(expected = "source too short")]
    fn short_source_panics() {
        copy_even(&mut [0u32; 4], &[1u32; 6]);
    }
}
