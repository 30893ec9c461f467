//! f32 ⇄ f16/bf16 slice conversions, bit-exact with `half` (round to nearest even, subnormals
//! and NaN kept), parallel above [`PAR_THRESHOLD`]. bf16 runs `half`'s own per-element
//! conversion inside a function compiled for AVX-512 (16 lanes; chosen at run time — the crate
//! is built for baseline x86-64, where the same loop gets 4 SSE2 lanes); f16 uses `half`'s
//! F16C conversion instructions, 16 lanes at a time under AVX-512. (The CPU's own
//! `vcvtneps2bf16` flushes subnormals, so it is not used for bf16.)

use super::compute::PAR_THRESHOLD;
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

fn avx512() -> bool {
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

/// `$f` over a slice pair, in a function compiled for AVX-512 (`$fast`) and a plain one
/// (`$name`, which picks the first at run time).
macro_rules! kernel {
    ($name:ident, $fast:ident, $src:ty, $dst:ty, $f:expr) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f,avx512bw")]
        fn $fast(src: &[$src], dst: &mut [$dst]) {
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = $f(s);
            }
        }

        fn $name(src: &[$src], dst: &mut [$dst]) {
            #[cfg(target_arch = "x86_64")]
            if avx512() {
                // SAFETY: the CPU has AVX-512F and AVX-512BW (checked above).
                return unsafe { $fast(src, dst) };
            }
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = $f(s);
            }
        }
    };
}

kernel!(narrow_bf16, narrow_bf16_avx512, f32, bf16, bf16::from_f32);
kernel!(widen_bf16, widen_bf16_avx512, bf16, f32, bf16::to_f32);

/// 16 lanes of `vcvtps2ph` (round to nearest even, the instruction `half` uses with F16C),
/// the tail through `half`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn narrow_f16_avx512(src: &[f32], dst: &mut [f16]) {
    use std::arch::x86_64::*;
    let whole = src.len() / 16 * 16;
    for (s, d) in src[..whole]
        .chunks_exact(16)
        .zip(dst[..whole].chunks_exact_mut(16))
    {
        // SAFETY: 16 readable f32 at `s`, 16 writable f16 (u16) at `d` (unaligned accesses).
        unsafe {
            let v = _mm512_loadu_ps(s.as_ptr());
            let h = _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
            _mm256_storeu_si256(d.as_mut_ptr().cast(), h);
        }
    }
    dst[whole..].convert_from_f32_slice(&src[whole..]);
}

/// 16 lanes of `vcvtph2ps` (exact), the tail through `half`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn widen_f16_avx512(src: &[f16], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let whole = src.len() / 16 * 16;
    for (s, d) in src[..whole]
        .chunks_exact(16)
        .zip(dst[..whole].chunks_exact_mut(16))
    {
        // SAFETY: 16 readable f16 (u16) at `s`, 16 writable f32 at `d` (unaligned accesses).
        unsafe {
            let h = _mm256_loadu_si256(s.as_ptr().cast());
            _mm512_storeu_ps(d.as_mut_ptr(), _mm512_cvtph_ps(h));
        }
    }
    src[whole..].convert_to_f32_slice(&mut dst[whole..]);
}

/// A half-precision element type and its serial slice conversions (same lengths; for callers
/// that already run in parallel, one block each).
pub(crate) trait Half: bytemuck::Pod + Send + Sync {
    /// `dst = f32(src)` (exact).
    fn widen(src: &[Self], dst: &mut [f32]);
    /// `dst = Self(src)` (round to nearest even).
    fn narrow(src: &[f32], dst: &mut [Self]);
}

impl Half for bf16 {
    fn widen(src: &[bf16], dst: &mut [f32]) {
        widen_bf16(src, dst)
    }
    fn narrow(src: &[f32], dst: &mut [bf16]) {
        narrow_bf16(src, dst)
    }
}

impl Half for f16 {
    fn widen(src: &[f16], dst: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if avx512() {
            // SAFETY: the CPU has AVX-512F.
            return unsafe { widen_f16_avx512(src, dst) };
        }
        src.convert_to_f32_slice(dst)
    }
    fn narrow(src: &[f32], dst: &mut [f16]) {
        #[cfg(target_arch = "x86_64")]
        if avx512() {
            // SAFETY: the CPU has AVX-512F.
            return unsafe { narrow_f16_avx512(src, dst) };
        }
        dst.convert_from_f32_slice(src)
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

#[cfg(test)]
mod tests {
    use super::*;

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
            *d = bf16::from_f32(s);
        }
        for i in 0..src.len() {
            assert_eq!(
                out[i].to_bits(),
                plain[i].to_bits(),
                "{:#x}",
                src[i].to_bits()
            );
        }
        let h: Vec<f16> = narrowed(&src).expect("fits");
        let back = widened(&h).expect("fits");
        for i in 0..src.len() {
            assert_eq!(h[i].to_bits(), f16::from_f32(src[i]).to_bits());
            assert_eq!(back[i].to_bits(), h[i].to_f32().to_bits());
        }
    }
}
