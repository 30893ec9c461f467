//! Every other element of a slice: the row copy of a stride-2 convolution's im2col (the
//! stem's 7 × 7 and every downsampling layer). Element by element it was 2 % of a 224-px f32
//! training step; with AVX-512 each 16 (4-byte) or 32 (2-byte) outputs are one pair of masked
//! loads, one two-source permute and one masked store. Moves bits only.

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

/// The lane mask of the first `n` lanes (all when `n ≥ bits`).
fn lanes(n: usize, bits: u32) -> u64 {
    if n >= bits as usize {
        u64::MAX >> (64 - bits)
    } else {
        (1u64 << n) - 1
    }
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
        let (m0, m1) = (
            lanes(need, 16) as u16,
            lanes(need.saturating_sub(16), 16) as u16,
        );
        // SAFETY: the masked lanes lie inside `src` (2·i0 + need ≤ src.len()), the stored
        // ones inside `dst`.
        unsafe {
            let p = src.as_ptr().add(2 * i0).cast::<i32>();
            let a = _mm512_maskz_loadu_epi32(m0, p);
            let b = _mm512_maskz_loadu_epi32(m1, p.wrapping_add(16));
            let v = _mm512_permutex2var_epi32(a, idx, b);
            let q = dst.as_mut_ptr().add(i0).cast::<i32>();
            _mm512_mask_storeu_epi32(q, lanes(out, 16) as u16, v);
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
        let (m0, m1) = (
            lanes(need, 32) as u32,
            lanes(need.saturating_sub(32), 32) as u32,
        );
        // SAFETY: as in `even_u32`.
        unsafe {
            let p = src.as_ptr().add(2 * i0).cast::<i16>();
            let a = _mm512_maskz_loadu_epi16(m0, p);
            let b = _mm512_maskz_loadu_epi16(m1, p.wrapping_add(32));
            let v = _mm512_permutex2var_epi16(a, idx, b);
            let q = dst.as_mut_ptr().add(i0).cast::<i16>();
            _mm512_mask_storeu_epi16(q, lanes(out, 32) as u32, v);
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

    #[test]
    #[should_panic(expected = "source too short")]
    fn short_source_panics() {
        copy_even(&mut [0u32; 4], &[1u32; 6]);
    }
}
