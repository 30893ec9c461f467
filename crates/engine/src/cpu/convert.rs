//! f32 ⇄ f16/bf16 slice conversions, bit-exact with `half` (round to nearest even, subnormals
//! and NaN kept), parallel above [`PAR_THRESHOLD`]. Under AVX-512 (chosen at run time; the
//! crate is built for baseline x86-64) both run 16 lanes at a time: f16 through the F16C
//! conversion instructions `half` itself uses, bf16 as integer arithmetic on the f32 bits —
//! `half`'s rounding (add `0x7FFF` plus the kept lowest bit, shift by 16; a NaN keeps its top
//! bits and is made quiet) written with vector instructions. (The CPU's own `vcvtneps2bf16`
//! flushes subnormals, so it is not used for bf16.) Measured in a bf16-autocast training step
//! (batch 8, 64 px): `half`'s per-element bf16 rounding compiled for AVX-512 took 12 % of the
//! step, as much as the AMX GEMMs; the vector form is memory-bound.

use super::compute::PAR_THRESHOLD;
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// Whether this CPU has AVX-512F and AVX-512BW (detected once).
pub(crate) fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static DETECTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Runs `f` compiled for AVX-512 (F, BW) where the CPU has it, else as is: the same
/// operations in the same order (no contraction into FMAs), so the same results, in wider
/// vectors. Only code inlined into `f` gains: keep its loops free of calls that are not
/// `#[inline]` (the crate is built for baseline x86-64, whose f64 loops run 2 lanes wide).
#[inline(always)]
pub(crate) fn with_avx512<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        #[target_feature(enable = "avx512f,avx512bw")]
        fn run<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: the CPU has AVX-512F/BW (checked above).
        return unsafe { run(f) };
    }
    f()
}

/// 16 lanes of `half`'s f32 → bf16 rounding on the f32 bits `x`, each bf16 in the low half
/// of its 32-bit lane (the high half zero): non-NaN `x` becomes
/// `(x + 0x7FFF + ((x >> 16) & 1)) >> 16` (nearest even; a carry out of the mantissa bumps
/// the exponent, up to infinity), NaN becomes `(x >> 16) | 0x40`.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
pub(crate) fn round_bf16_lanes(x: std::arch::x86_64::__m512i) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    let high = _mm512_srli_epi32::<16>(x);
    let lsb = _mm512_and_si512(high, _mm512_set1_epi32(1));
    let bias = _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), lsb);
    let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(x, bias));
    let magnitude = _mm512_and_si512(x, _mm512_set1_epi32(0x7FFF_FFFF));
    let nan = _mm512_cmpgt_epu32_mask(magnitude, _mm512_set1_epi32(0x7F80_0000));
    _mm512_mask_blend_epi32(nan, rounded, _mm512_or_si512(high, _mm512_set1_epi32(0x40)))
}

// Lane masks of the converters below: all 16 lanes, or a tail's first ones (short rows
// convert as fast as long ones, without a call into `half` per value).
#[cfg(target_arch = "x86_64")]
use super::skinny::mask16;

/// 16 lanes of [`round_bf16_lanes`] at a time, the tail masked.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
fn narrow_bf16_avx512(src: &[f32], dst: &mut [bf16]) {
    use std::arch::x86_64::*;
    let len = src.len().min(dst.len());
    for i in (0..len).step_by(16) {
        let m = mask16(len - i);
        // SAFETY: the masked lanes are the `min(16, len - i)` readable f32 at `src[i..]` and
        // writable bf16 (u16) at `dst[i..]` (unaligned; masked-off lanes are not accessed).
        unsafe {
            let x = _mm512_maskz_loadu_epi32(m, src.as_ptr().add(i).cast());
            let out = _mm512_cvtepi32_epi16(round_bf16_lanes(x));
            _mm512_mask_storeu_epi16(
                dst.as_mut_ptr().add(i).cast(),
                u32::from(m),
                _mm512_castsi256_si512(out),
            );
        }
    }
}

/// 16 lanes of bf16 → f32 (the bits shifted up by 16: exact; a NaN made quiet, as `half`
/// does), the tail masked.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
fn widen_bf16_avx512(src: &[bf16], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let len = src.len().min(dst.len());
    let (abs, inf, quiet) = (
        _mm512_set1_epi32(0x7FFF),
        _mm512_set1_epi32(0x7F80),
        _mm512_set1_epi32(0x40),
    );
    for i in (0..len).step_by(16) {
        let m = mask16(len - i);
        // SAFETY: the masked lanes are the `min(16, len - i)` readable bf16 (u16) at `src[i..]`
        // and writable f32 at `dst[i..]` (unaligned; masked-off lanes are not accessed).
        unsafe {
            let h = _mm512_maskz_loadu_epi16(u32::from(m), src.as_ptr().add(i).cast());
            let h = _mm512_cvtepu16_epi32(_mm512_castsi512_si256(h));
            let nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(h, abs), inf);
            let h = _mm512_mask_or_epi32(h, nan, h, quiet);
            _mm512_mask_storeu_epi32(
                dst.as_mut_ptr().add(i).cast(),
                m,
                _mm512_slli_epi32::<16>(h),
            );
        }
    }
}

fn narrow_bf16(src: &[f32], dst: &mut [bf16]) {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: the CPU has AVX-512F and AVX-512BW (checked above).
        return unsafe { narrow_bf16_avx512(src, dst) };
    }
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = half::bf16::from_f32(s);
    }
}

fn widen_bf16(src: &[bf16], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: the CPU has AVX-512F and AVX-512BW (checked above).
        return unsafe { widen_bf16_avx512(src, dst) };
    }
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = s.to_f32();
    }
}

/// 16 lanes of `vcvtps2ph` (round to nearest even, the instruction `half` uses with F16C),
/// the tail masked.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
fn narrow_f16_avx512(src: &[f32], dst: &mut [f16]) {
    use std::arch::x86_64::*;
    let len = src.len().min(dst.len());
    for i in (0..len).step_by(16) {
        let m = mask16(len - i);
        // SAFETY: the masked lanes are the `min(16, len - i)` readable f32 at `src[i..]` and
        // writable f16 (u16) at `dst[i..]` (unaligned; masked-off lanes are not accessed).
        unsafe {
            let v = _mm512_maskz_loadu_ps(m, src.as_ptr().add(i));
            let h = _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
            _mm512_mask_storeu_epi16(
                dst.as_mut_ptr().add(i).cast(),
                u32::from(m),
                _mm512_castsi256_si512(h),
            );
        }
    }
}

/// 16 lanes of `vcvtph2ps` (exact), the tail masked.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
fn widen_f16_avx512(src: &[f16], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let len = src.len().min(dst.len());
    for i in (0..len).step_by(16) {
        let m = mask16(len - i);
        // SAFETY: the masked lanes are the `min(16, len - i)` readable f16 (u16) at `src[i..]`
        // and writable f32 at `dst[i..]` (unaligned; masked-off lanes are not accessed).
        unsafe {
            let h = _mm512_maskz_loadu_epi16(u32::from(m), src.as_ptr().add(i).cast());
            let v = _mm512_cvtph_ps(_mm512_castsi512_si256(h));
            _mm512_mask_storeu_ps(dst.as_mut_ptr().add(i), m, v);
        }
    }
}

/// A half-precision element type and its serial slice conversions (same lengths; for callers
/// that already run in parallel, one block each).
pub(crate) trait Half: bytemuck::Pod + bytemuck::Zeroable + Send + Sync {
    /// `dst = f32(src)` (exact).
    fn widen(src: &[Self], dst: &mut [f32]);
    /// `dst = Self(src)` (round to nearest even).
    fn narrow(src: &[f32], dst: &mut [Self]);
    /// `v = f32(Self(v))` in place (what [`Half::narrow`] then [`Half::widen`] give).
    fn round_in_place(v: &mut [f32]);
}

/// 16 lanes at a time: [`round_bf16_lanes`] shifted back up (a NaN is already quiet, as
/// widening would make it), the tail through `half`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
fn round_bf16_in_place_avx512(v: &mut [f32]) {
    use std::arch::x86_64::*;
    let whole = v.len() / 16 * 16;
    for c in v[..whole].chunks_exact_mut(16) {
        // SAFETY: 16 readable and writable f32 at `c` (unaligned accesses).
        unsafe {
            let x = round_bf16_lanes(_mm512_loadu_si512(c.as_ptr().cast()));
            _mm512_storeu_si512(c.as_mut_ptr().cast(), _mm512_slli_epi32::<16>(x));
        }
    }
    for x in &mut v[whole..] {
        *x = half::bf16::from_f32(*x).to_f32();
    }
}

/// 16 lanes at a time through `vcvtps2ph` and `vcvtph2ps`, the tail through `half`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn round_f16_in_place_avx512(v: &mut [f32]) {
    use std::arch::x86_64::*;
    let whole = v.len() / 16 * 16;
    for c in v[..whole].chunks_exact_mut(16) {
        // SAFETY: 16 readable and writable f32 at `c` (unaligned accesses).
        unsafe {
            let x = _mm512_loadu_ps(c.as_ptr());
            let h = _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x);
            _mm512_storeu_ps(c.as_mut_ptr(), _mm512_cvtph_ps(h));
        }
    }
    for x in &mut v[whole..] {
        *x = half::f16::from_f32(*x).to_f32();
    }
}

impl Half for bf16 {
    fn widen(src: &[bf16], dst: &mut [f32]) {
        widen_bf16(src, dst)
    }
    fn narrow(src: &[f32], dst: &mut [bf16]) {
        narrow_bf16(src, dst)
    }
    fn round_in_place(v: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if avx512() {
            // SAFETY: the CPU has AVX-512F and AVX-512BW (checked above).
            return unsafe { round_bf16_in_place_avx512(v) };
        }
        v.iter_mut().for_each(|x| *x = bf16::from_f32(*x).to_f32());
    }
}

impl Half for f16 {
    fn widen(src: &[f16], dst: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if avx512() {
            // SAFETY: the CPU has AVX-512F and AVX-512BW (`avx512()` checks both).
            return unsafe { widen_f16_avx512(src, dst) };
        }
        src.convert_to_f32_slice(dst)
    }
    fn narrow(src: &[f32], dst: &mut [f16]) {
        #[cfg(target_arch = "x86_64")]
        if avx512() {
            // SAFETY: the CPU has AVX-512F and AVX-512BW (`avx512()` checks both).
            return unsafe { narrow_f16_avx512(src, dst) };
        }
        dst.convert_from_f32_slice(src)
    }
    fn round_in_place(v: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if avx512() {
            // SAFETY: the CPU has AVX-512F.
            return unsafe { round_f16_in_place_avx512(v) };
        }
        v.iter_mut().for_each(|x| *x = f16::from_f32(*x).to_f32());
    }
}

/// Runs `f` over matching chunks of `src` and `dst` (same length), in parallel when long.
fn chunked<S: Sync, D: Send>(src: &[S], dst: &mut [D], f: impl Fn(&[S], &mut [D]) + Sync) {
    debug_assert_eq!(src.len(), dst.len());
    if src.len() >= PAR_THRESHOLD {
        dst.par_chunks_mut(CHUNK)
            .zip(src.par_chunks(CHUNK))
            .for_each(|(d, s)| f(s, d));
    } else {
        f(src, dst);
    }
}

/// `src` widened to f32 (exact) in a fresh buffer, in parallel when long.
pub(crate) fn widened<H: Half>(src: &[H]) -> crate::Result<Vec<f32>> {
    let mut out = crate::alloc::for_overwrite::<f32>(src.len())?;
    chunked(src, &mut out, H::widen);
    Ok(out)
}

/// `src` rounded to `H` (nearest even) in a fresh buffer, in parallel when long.
pub(crate) fn narrowed<H: Half>(src: &[f32]) -> crate::Result<Vec<H>> {
    let mut out = crate::alloc::for_overwrite::<H>(src.len())?;
    chunked(src, &mut out, H::narrow);
    Ok(out)
}

/// `src` rounded to `H` and back (nearest even: what a cast to `H` and back to f32 gives) in a
/// fresh buffer, in parallel when long.
pub(crate) fn rounded_through<H: Half>(src: &[f32]) -> crate::Result<Vec<f32>> {
    let mut out = crate::alloc::for_overwrite::<f32>(src.len())?;
    // (Each chunk copied, then rounded in place while it is in cache.)
    chunked(src, &mut out, |s, d| {
        d.copy_from_slice(s);
        H::round_in_place(d)
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every length up to 40 (the masked tails), through the serial slice conversions.
    #[test]
    fn short_slices_convert_exactly() {
        let src: Vec<f32> = (0..40)
            .map(|i| {
                [1.0f32 / 3.0, -7.5e-6, 65504.0, 70000.0, f32::NAN, -0.0][i % 6] * (i as f32 + 1.0)
            })
            .collect();
        for len in 0..=src.len() {
            let s = &src[..len];
            let mut h = vec![f16::ZERO; len];
            let mut b = vec![bf16::ZERO; len];
            <f16 as Half>::narrow(s, &mut h);
            <bf16 as Half>::narrow(s, &mut b);
            for i in 0..len {
                assert_eq!(
                    h[i].to_bits(),
                    f16::from_f32(s[i]).to_bits(),
                    "f16 {len} {i}"
                );
                assert_eq!(
                    b[i].to_bits(),
                    bf16::from_f32(s[i]).to_bits(),
                    "bf16 {len} {i}"
                );
            }
            let (mut wh, mut wb) = (vec![0f32; len], vec![0f32; len]);
            <f16 as Half>::widen(&h, &mut wh);
            <bf16 as Half>::widen(&b, &mut wb);
            for i in 0..len {
                assert_eq!(wh[i].to_bits(), h[i].to_f32().to_bits(), "f16 {len} {i}");
                assert_eq!(wb[i].to_bits(), b[i].to_f32().to_bits(), "bf16 {len} {i}");
            }
        }
    }

    /// Every bf16 widens exactly; f32 values around every rounding case, subnormals, infinities
    /// and NaNs narrow exactly as `half` does, on the AVX-512 path and the plain one.
    #[test]
    fn bit_exact_with_half() {
        let all: Vec<bf16> = (0..=u16::MAX).map(bf16::from_bits).collect();
        let wide = widened(&all).expect("fits");
        for (b, w) in all.iter().zip(&wide) {
            assert_eq!(w.to_bits(), b.to_f32().to_bits(), "{b:?}");
        }
        // Each bf16 with every low half pattern that decides rounding, plus randoms.
        let mut src: Vec<f32> = Vec::new();
        for hi in (0..=u16::MAX as u32).step_by(7) {
            for lo in [0u32, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF, 0x4000] {
                src.push(f32::from_bits(hi << 16 | lo));
            }
        }
        let mut seed = 0x0DDB_1A5E_5BAD_5EEDu64;
        src.extend((0..100_000).map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            f32::from_bits((seed >> 32) as u32)
        }));
        let out: Vec<bf16> = narrowed(&src).expect("fits");
        let mut plain = vec![bf16::ZERO; src.len()];
        for (d, &s) in plain.iter_mut().zip(&src) {
            *d = half::bf16::from_f32(s);
        }
        for i in 0..src.len() {
            assert_eq!(
                out[i].to_bits(),
                plain[i].to_bits(),
                "{:#x}",
                src[i].to_bits()
            );
        }
        let mut through = src.clone();
        <bf16 as Half>::round_in_place(&mut through);
        for i in 0..src.len() {
            assert_eq!(through[i].to_bits(), plain[i].to_f32().to_bits(), "{i}");
        }
        let mut through = src.clone();
        <f16 as Half>::round_in_place(&mut through);
        let copied = rounded_through::<f16>(&src).expect("fits");
        for i in 0..src.len() {
            let want = f16::from_f32(src[i]).to_f32();
            assert_eq!(through[i].to_bits(), want.to_bits(), "{i}");
            assert_eq!(copied[i].to_bits(), want.to_bits(), "{i}");
        }
        let h: Vec<f16> = narrowed(&src).expect("fits");
        let back = widened(&h).expect("fits");
        for i in 0..src.len() {
            assert_eq!(h[i].to_bits(), f16::from_f32(src[i]).to_bits());
            assert_eq!(back[i].to_bits(), h[i].to_f32().to_bits());
        }
    }
}
