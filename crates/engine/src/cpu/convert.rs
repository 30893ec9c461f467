//! f32 ⇄ f16/bf16 slice conversions, bit-exact with `half` (round to nearest even, subnormals
//! and NaN kept), parallel above [`PAR_THRESHOLD`]. Under AVX-512 (chosen at run time; the
//! crate is built for baseline x86-64) both run 16 lanes at a time: f16 through the F16C
//! conversion instructions `half` itself uses, bf16 as integer arithmetic on the f32 bits —
//! `half`'s rounding (add `0x7FFF` plus the kept lowest bit, shift by 16; a NaN keeps its top
//! bits and is made quiet) written with vector instructions. (The CPU's own `vcvtneps2bf16`
//! flushes subnormals, so it is not used for bf16.) Measured in a bf16-autocast training step
//! (batch 8, 64 px): `half`'s per-element bf16 rounding compiled for AVX-512 took 12 % of the
//! step, as much as the AMX GEMMs; the vector form is memory-bound. CPUs with AVX2 but no
//! AVX-512 (AMD Zen, older Intel) run f16 8 lanes at a time through F16C, and bf16 as the same
//! integer arithmetic in a branch-free loop compiled for AVX2 (measured on Zen 3 in an f16
//! autocast step at batch 4, 32 px: `half`'s slice and per-element conversions took 27 %).

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

/// Whether this CPU has AVX2 and F16C (detected once; every AVX2 CPU has F16C).
pub(crate) fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static DETECTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("f16c")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The widest vectors this CPU runs code that is compiled for a target feature at run time
/// ([`with_wide_vectors`] and the loops that take a `Vector` argument).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Vector {
    /// Baseline x86-64 (SSE2: 4 f32 lanes), or not x86-64.
    Base,
    /// AVX2 and F16C (8 f32 lanes): AMD Zen, Intel from Haswell.
    Avx2,
    /// AVX-512F/BW (16 f32 lanes).
    Avx512,
}

/// This CPU's [`Vector`] width (detected once).
pub(crate) fn vector() -> Vector {
    if avx512() {
        Vector::Avx512
    } else if avx2() {
        Vector::Avx2
    } else {
        Vector::Base
    }
}

/// Runs `f` compiled for the CPU's widest [`vector`] width — AVX-512 (F, BW), else AVX2, else
/// as is: the same operations in the same order (no contraction into FMAs: neither feature
/// set enables FMA), so the same results, in wider vectors. Only code inlined into `f` gains:
/// keep its loops free of calls that are not `#[inline]` (the crate is built for baseline
/// x86-64, whose f64 loops run 2 lanes wide).
#[inline(always)]
pub(crate) fn with_wide_vectors<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    match vector() {
        Vector::Avx512 => {
            #[target_feature(enable = "avx512f,avx512bw")]
            fn run<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            // SAFETY: the CPU has AVX-512F/BW (`vector` checked).
            return unsafe { run(f) };
        }
        Vector::Avx2 => {
            #[target_feature(enable = "avx2")]
            fn run<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            // SAFETY: the CPU has AVX2 (`vector` checked).
            return unsafe { run(f) };
        }
        Vector::Base => {}
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

/// `half`'s f32 → bf16 rounding of the bits `x` (see [`round_bf16_lanes`]), branch-free so
/// that a loop of it vectorizes.
#[inline(always)]
fn round_bf16_bits(x: u32) -> u16 {
    let high = x >> 16;
    let rounded = x.wrapping_add(0x7FFF + (high & 1)) >> 16;
    let nan = x & 0x7FFF_FFFF > 0x7F80_0000;
    (if nan { high | 0x40 } else { rounded }) as u16
}

/// bf16 bits `h` widened to f32 bits (exact; a NaN made quiet, as `half` does), branch-free.
#[inline(always)]
fn widen_bf16_bits(h: u16) -> u32 {
    let nan = h & 0x7FFF > 0x7F80;
    u32::from(if nan { h | 0x40 } else { h }) << 16
}

fn narrow_bf16(src: &[f32], dst: &mut [bf16]) {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: the CPU has AVX-512F and AVX-512BW (checked above).
        return unsafe { narrow_bf16_avx512(src, dst) };
    }
    let dst: &mut [u16] = bytemuck::cast_slice_mut(dst);
    with_wide_vectors(
        #[inline(always)]
        || {
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = round_bf16_bits(s.to_bits());
            }
        },
    )
}

fn widen_bf16(src: &[bf16], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: the CPU has AVX-512F and AVX-512BW (checked above).
        return unsafe { widen_bf16_avx512(src, dst) };
    }
    let (src, dst): (&[u16], &mut [u32]) =
        (bytemuck::cast_slice(src), bytemuck::cast_slice_mut(dst));
    with_wide_vectors(
        #[inline(always)]
        || {
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = widen_bf16_bits(s);
            }
        },
    )
}

/// `f(src[i..i + 8], dst[i..i + 8])` over whole groups of 8, the tail through `tail`: the
/// F16C (AVX2-class CPU) converters' loop.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn by_eight<S: Copy, D>(
    src: &[S],
    dst: &mut [D],
    f: impl Fn(*const S, *mut D),
    tail: impl Fn(S) -> D,
) {
    let len = src.len().min(dst.len());
    let whole = len / 8 * 8;
    for i in (0..whole).step_by(8) {
        f(src[i..i + 8].as_ptr(), dst[i..i + 8].as_mut_ptr());
    }
    for (d, &s) in dst[whole..len].iter_mut().zip(&src[whole..len]) {
        *d = tail(s);
    }
}

/// 8 lanes of `vcvtps2ph` (nearest even) at a time, the tail through `half` (which uses the
/// same instruction).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
fn narrow_f16_avx2(src: &[f32], dst: &mut [f16]) {
    use std::arch::x86_64::*;
    let store = |s: *const f32, d: *mut f16| {
        // SAFETY: `by_eight` passes 8 readable f32 and 8 writable f16 (unaligned accesses).
        unsafe {
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(s));
            _mm_storeu_si128(d.cast(), h)
        }
    };
    by_eight(src, dst, store, f16::from_f32)
}

/// 8 lanes of `vcvtph2ps` (exact) at a time, the tail through `half`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
fn widen_f16_avx2(src: &[f16], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let store = |s: *const f16, d: *mut f32| {
        // SAFETY: `by_eight` passes 8 readable f16 and 8 writable f32 (unaligned accesses).
        unsafe { _mm256_storeu_ps(d, _mm256_cvtph_ps(_mm_loadu_si128(s.cast()))) }
    };
    by_eight(src, dst, store, f16::to_f32)
}

/// [`Half::round_raw`] for f16, 8 lanes at a time through `vcvtps2ph` and `vcvtph2ps`.
///
/// # Safety
/// The CPU has AVX2 and F16C; `src`, `dst` and `len` as [`Half::round_raw`] asks (each group
/// of 8 is loaded before it is stored, so in place is fine).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn round_f16_avx2(src: *const f32, dst: *mut f32, len: usize) {
    use std::arch::x86_64::*;
    let whole = len / 8 * 8;
    for i in (0..whole).step_by(8) {
        // SAFETY: 8 readable f32 at `src + i` and writable at `dst + i` (the caller's
        // contract; unaligned accesses).
        unsafe {
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(src.add(i)));
            _mm256_storeu_ps(dst.add(i), _mm256_cvtph_ps(h));
        }
    }
    for i in whole..len {
        // SAFETY: as above, one f32.
        unsafe { *dst.add(i) = f16::from_f32(*src.add(i)).to_f32() };
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
    /// `dst[i] = f32(Self(src[i]))` for `i < len` (what [`Half::narrow`] then [`Half::widen`]
    /// give).
    ///
    /// # Safety
    /// `src` is valid for reads and `dst` for writes of `len` f32 (non-null and aligned, as for
    /// `ptr::read`/`ptr::write`, even when `len` is 0), and they are either the same place (in
    /// place) or do not overlap.
    unsafe fn round_raw(src: *const f32, dst: *mut f32, len: usize);
    /// `v = f32(Self(v))` in place (what [`Half::narrow`] then [`Half::widen`] give).
    fn round_in_place(v: &mut [f32]) {
        let p = v.as_mut_ptr();
        // SAFETY: `v` is readable and writable for its length; source and destination are the
        // same place.
        unsafe { Self::round_raw(p, p, v.len()) }
    }
    /// `dst = f32(Self(src))` (same lengths): [`Half::round_in_place`] without a copy first.
    fn round(src: &[f32], dst: &mut [f32]) {
        assert_eq!(
            src.len(),
            dst.len(),
            "rounding between slices of different lengths"
        );
        // SAFETY: `src` readable and `dst` writable for the length; a `&` and a `&mut` never
        // overlap.
        unsafe { Self::round_raw(src.as_ptr(), dst.as_mut_ptr(), src.len()) }
    }
}

/// [`Half::round_raw`] for bf16, 16 lanes at a time: [`round_bf16_lanes`] shifted back up (a
/// NaN is already quiet, as widening would make it), the tail through `half`.
///
/// # Safety
/// The CPU has AVX-512F/BW; `src`, `dst` and `len` as [`Half::round_raw`] asks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn round_bf16_avx512(src: *const f32, dst: *mut f32, len: usize) {
    use std::arch::x86_64::*;
    let whole = len / 16 * 16;
    for i in (0..whole).step_by(16) {
        // SAFETY: 16 readable f32 at `src + i` and writable at `dst + i` (the caller's
        // contract; unaligned accesses).
        unsafe {
            let x = round_bf16_lanes(_mm512_loadu_si512(src.add(i).cast()));
            _mm512_storeu_si512(dst.add(i).cast(), _mm512_slli_epi32::<16>(x));
        }
    }
    for i in whole..len {
        // SAFETY: as above, one f32.
        unsafe { *dst.add(i) = half::bf16::from_f32(*src.add(i)).to_f32() };
    }
}

/// [`Half::round_raw`] for f16, 16 lanes at a time through `vcvtps2ph` and `vcvtph2ps`, the
/// tail through `half`.
///
/// # Safety
/// The CPU has AVX-512F; `src`, `dst` and `len` as [`Half::round_raw`] asks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn round_f16_avx512(src: *const f32, dst: *mut f32, len: usize) {
    use std::arch::x86_64::*;
    let whole = len / 16 * 16;
    for i in (0..whole).step_by(16) {
        // SAFETY: 16 readable f32 at `src + i` and writable at `dst + i` (the caller's
        // contract; unaligned accesses).
        unsafe {
            let x = _mm512_loadu_ps(src.add(i));
            let h = _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x);
            _mm512_storeu_ps(dst.add(i), _mm512_cvtph_ps(h));
        }
    }
    for i in whole..len {
        // SAFETY: as above, one f32.
        unsafe { *dst.add(i) = half::f16::from_f32(*src.add(i)).to_f32() };
    }
}

impl Half for bf16 {
    fn widen(src: &[bf16], dst: &mut [f32]) {
        widen_bf16(src, dst)
    }
    fn narrow(src: &[f32], dst: &mut [bf16]) {
        narrow_bf16(src, dst)
    }
    unsafe fn round_raw(src: *const f32, dst: *mut f32, len: usize) {
        #[cfg(target_arch = "x86_64")]
        if avx512() {
            // SAFETY: the CPU has AVX-512F and AVX-512BW (checked above); the pointers are the
            // caller's.
            return unsafe { round_bf16_avx512(src, dst, len) };
        }
        let (src, dst) = (src.cast::<u32>(), dst.cast::<u32>());
        let round = |x: u32| widen_bf16_bits(round_bf16_bits(x));
        // (Two loops over slices, not one over the pointers: a loop that may write where it
        // reads does not vectorize, and the in-place one would fail the overlap check.)
        if std::ptr::eq(src, dst) {
            // SAFETY: `len` readable and writable u32 (f32 bits) at `dst` (the caller's).
            let v = unsafe { std::slice::from_raw_parts_mut(dst, len) };
            with_wide_vectors(
                #[inline(always)]
                || v.iter_mut().for_each(|x| *x = round(*x)),
            )
        } else {
            // SAFETY: `len` readable u32 at `src`, writable at `dst`, not overlapping (the
            // caller's contract).
            let (s, d) = unsafe {
                (
                    std::slice::from_raw_parts(src, len),
                    std::slice::from_raw_parts_mut(dst, len),
                )
            };
            with_wide_vectors(
                #[inline(always)]
                || d.iter_mut().zip(s).for_each(|(d, &s)| *d = round(s)),
            )
        }
    }
}

impl Half for f16 {
    fn widen(src: &[f16], dst: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        match vector() {
            // SAFETY: the CPU has AVX-512F and AVX-512BW (`avx512()` checks both).
            Vector::Avx512 => return unsafe { widen_f16_avx512(src, dst) },
            // SAFETY: the CPU has AVX2 and F16C (`avx2()` checks both).
            Vector::Avx2 => return unsafe { widen_f16_avx2(src, dst) },
            Vector::Base => {}
        }
        src.convert_to_f32_slice(dst)
    }
    fn narrow(src: &[f32], dst: &mut [f16]) {
        #[cfg(target_arch = "x86_64")]
        match vector() {
            // SAFETY: the CPU has AVX-512F and AVX-512BW (`avx512()` checks both).
            Vector::Avx512 => return unsafe { narrow_f16_avx512(src, dst) },
            // SAFETY: the CPU has AVX2 and F16C (`avx2()` checks both).
            Vector::Avx2 => return unsafe { narrow_f16_avx2(src, dst) },
            Vector::Base => {}
        }
        dst.convert_from_f32_slice(src)
    }
    unsafe fn round_raw(src: *const f32, dst: *mut f32, len: usize) {
        #[cfg(target_arch = "x86_64")]
        match vector() {
            // SAFETY: the CPU has AVX-512F; the pointers are the caller's.
            Vector::Avx512 => return unsafe { round_f16_avx512(src, dst, len) },
            // SAFETY: the CPU has AVX2 and F16C (`avx2()` checks both); the pointers are the
            // caller's.
            Vector::Avx2 => return unsafe { round_f16_avx2(src, dst, len) },
            Vector::Base => {}
        }
        for i in 0..len {
            // SAFETY: one readable f32 at `src + i`, writable at `dst + i` (the caller's).
            unsafe { *dst.add(i) = f16::from_f32(*src.add(i)).to_f32() };
        }
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
    chunked(src, &mut out, H::round);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every length up to 40 (the vector loops' tails: masked under AVX-512, scalar under
    /// AVX2), through the serial slice conversions.
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
            // Rounded in place and from one slice into another (the tails too).
            let (mut ih, mut ib) = (s.to_vec(), s.to_vec());
            <f16 as Half>::round_in_place(&mut ih);
            <bf16 as Half>::round_in_place(&mut ib);
            let (mut rh, mut rb) = (vec![0f32; len], vec![0f32; len]);
            <f16 as Half>::round(s, &mut rh);
            <bf16 as Half>::round(s, &mut rb);
            for i in 0..len {
                let (want_h, want_b) = (h[i].to_f32().to_bits(), b[i].to_f32().to_bits());
                assert_eq!(
                    (ih[i].to_bits(), rh[i].to_bits()),
                    (want_h, want_h),
                    "f16 {len} {i}"
                );
                assert_eq!(
                    (ib[i].to_bits(), rb[i].to_bits()),
                    (want_b, want_b),
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
        let copied = rounded_through::<bf16>(&src).expect("fits");
        for i in 0..src.len() {
            assert_eq!(through[i].to_bits(), plain[i].to_f32().to_bits(), "{i}");
            assert_eq!(copied[i].to_bits(), plain[i].to_f32().to_bits(), "{i}");
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

    /// The AVX2 / F16C converters and the branch-free bf16 bit functions (what CPUs without
    /// AVX-512 run; an AVX-512 CPU runs them only here) equal `half` on every f16 and bf16
    /// and on f32 values around every rounding case, at every tail length to 20.
    #[test]
    fn narrow_paths_equal_half() {
        let mut src: Vec<f32> = Vec::new();
        for hi in (0..=u16::MAX as u32).step_by(3) {
            // (f16 ties: 0x1000 with an even kept bit, 0x3000 with an odd one; bf16 ties:
            // 0x8000, the kept bit from `hi`.)
            for lo in [
                0u32, 1, 0x0FFF, 0x1000, 0x1001, 0x2FFF, 0x3000, 0x3001, 0x7FFF, 0x8000, 0x8001,
                0xFFFF,
            ] {
                src.push(f32::from_bits(hi << 16 | lo));
            }
        }
        for (i, &x) in src.iter().enumerate() {
            let want = bf16::from_f32(x);
            assert_eq!(round_bf16_bits(x.to_bits()), want.to_bits(), "{i}");
        }
        for h in 0..=u16::MAX {
            let want = bf16::from_bits(h).to_f32().to_bits();
            assert_eq!(widen_bf16_bits(h), want, "{h:#x}");
        }
        #[cfg(target_arch = "x86_64")]
        {
            if !avx2() {
                println!("skipped the F16C part: this CPU has no AVX2/F16C");
                return;
            }
            let all: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
            // The last length, `src.len()`, exceeds 65 536: every f16 pattern is widened once.
            assert!(src.len() > all.len());
            for len in (0..20).chain([src.len()]) {
                let s = &src[..len];
                let mut h = vec![f16::ZERO; len];
                // SAFETY: the CPU has AVX2 and F16C (checked above).
                unsafe { narrow_f16_avx2(s, &mut h) };
                // In place, and from one slice into another.
                let mut r = s.to_vec();
                // SAFETY: as above; `len` f32 at one place.
                unsafe { round_f16_avx2(r.as_ptr(), r.as_mut_ptr(), len) };
                let mut into = vec![0f32; len];
                // SAFETY: as above; `len` f32 in each of two buffers.
                unsafe { round_f16_avx2(s.as_ptr(), into.as_mut_ptr(), len) };
                for i in 0..len {
                    assert_eq!(h[i].to_bits(), f16::from_f32(s[i]).to_bits(), "{len} {i}");
                    assert_eq!(r[i].to_bits(), h[i].to_f32().to_bits(), "{len} {i}");
                    assert_eq!(into[i].to_bits(), h[i].to_f32().to_bits(), "{len} {i}");
                }
                let a = &all[..len.min(all.len())];
                let mut w = vec![0f32; a.len()];
                // SAFETY: as above.
                unsafe { widen_f16_avx2(a, &mut w) };
                for (x, y) in a.iter().zip(&w) {
                    assert_eq!(y.to_bits(), x.to_f32().to_bits(), "{x:?}");
                }
            }
        }
    }
}
