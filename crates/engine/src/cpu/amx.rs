//! bf16 GEMM on AMX tiles (Intel Advanced Matrix Extensions, `TDPBF16PS`), chosen at run time
//! where the CPU has AMX-BF16 and Linux grants the tile state; on CPUs with AVX512-BF16 but no
//! AMX the same packed blocks run on `VDPBF16PS` ([`bf16_dot`](super::bf16_dot), [`Engine`]);
//! elsewhere bf16 operands are widened to f32 for the f32 GEMM. The AMX instructions are
//! emitted with `asm!` (the AMX intrinsics are unstable in Rust).
//!
//! **Numerics.** Every product of two bf16 values is exact in f32, and the tile accumulates
//! them in f32 (round to nearest even, pairs of `k` added to the accumulator in turn), so the
//! result satisfies the f32 GEMM bound of DESIGN.md (`K · 2^-23 · Σ|a||b|`). Like every AMX
//! and AVX512-BF16 unit, the tile treats inputs below 2^-126 in magnitude (bf16 subnormals) as
//! zero and flushes f32 results below 2^-126 to zero: an extra absolute error of at most
//! `2^-126 · (1 + Σ|b|)` per element, far below the bound's relative term for any operand that
//! is not itself almost entirely subnormal. `HEMI_CPU_NO_AMX=1` turns the path off.
//!
//! **Blocking.** A is packed (`amx_pack.rs`) into 16-row × 32-`k` tiles, B into 16-pair-row ×
//! 16-column tiles in the pairwise (VNNI) order the instruction reads, both zero-padded to
//! multiples of 32;
//! each 32 × 32 block of C is four accumulator tiles fed by two A and two B tiles per 32 `k`
//! (tmm0–3 accumulate, tmm4–5 hold A, tmm6–7 hold B), stored once to a local buffer and added
//! (or copied) into C's valid rows and columns. B is packed whole, once; a row-major A panel by
//! panel (32 rows), by the worker that multiplies it, just before its row of blocks.
//!
//! Prediction: 1024 bf16 multiply-adds per cycle per core on the tile unit, so the packing and
//! the epilogue (memory-bound) dominate; measured peak of one dependent `TDPBF16PS` chain on
//! this 2-core VM: 2.9 TFLOP/s per core.
//!
//! **f16 operands** ([`gemm_f16`]) run on the same tiles, each element split into two bf16
//! parts whose sum is exactly its value (`hi` = its nearest bf16, `lo` = the rest: an f16 has
//! 11 significant bits, a bf16 8, so the rest fits in one more bf16). The product of two f16
//! values is the sum of four exact part products; the three small ones accumulate on tiles of
//! their own and join the large sums once per block, so the f32 GEMM bound still holds. Four
//! tile products per `k` step, and twice the packed bytes of bf16 (as many as the f32
//! kernel's widened panels). Prediction (per core): the tile unit at a quarter of its bf16 rate
//! (~0.7 TFLOP/s) is still ~4× AVX-512's f32 peak (~0.19 TFLOP/s at 3 GHz), so these GEMMs
//! become as packing-bound as the bf16 ones and should take about the f32 kernel's packing
//! time. (Written and tested on Sapphire Rapids; its step time is still to be measured there:
//! the session that wrote it ran on a CPU without AMX.)

use super::amx_pack::{pack_a, pack_b, AmxSrc, Hi, Lo, RoundedBf16};
use super::sgemm_pack::RoundedF16;
use bytemuck::TransparentWrapper;
use half::{bf16, f16};
use rayon::prelude::*;

/// Rows of an A tile and of a C tile.
pub(crate) const TM: usize = 16;
/// Columns of a B tile and of a C tile (f32).
pub(crate) const TN: usize = 16;
/// `k` per tile step (32 bf16 = 64 bytes per tile row).
pub(crate) const TK: usize = 32;
/// Elements of one packed A or B tile.
pub(crate) const TILE: usize = TM * TK;

/// Whether this CPU runs bf16 GEMMs on AMX: it reports AMX-BF16 and the kernel granted this
/// process the tile data state (detected once).
pub(crate) fn available() -> bool {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        static DETECTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| {
            std::env::var_os("HEMI_CPU_NO_AMX").is_none()
                && cpu_has_amx_bf16()
                && request_tile_state()
        })
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    false
}

/// The unit that multiplies bf16 blocks in [`gemm_bf16`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Engine {
    /// AMX tiles ([`block`]).
    Amx,
    /// AVX512-BF16 dot products ([`bf16_dot::block`](super::bf16_dot::block)).
    Dot,
}

impl Engine {
    /// Whether this CPU has the engine (detected once each).
    fn present(self) -> bool {
        match self {
            Engine::Amx => available(),
            Engine::Dot => super::bf16_dot::available(),
        }
    }
}

/// The engine this CPU runs bf16 GEMMs on: AMX where [`available`], else AVX512-BF16 where the
/// CPU has it, else none (bf16 operands are then widened for the f32 GEMM).
pub(crate) fn engine() -> Option<Engine> {
    [Engine::Amx, Engine::Dot].into_iter().find(|e| e.present())
}

/// CPUID leaf 7: EDX bit 22 (AMX-BF16) and bit 24 (AMX-TILE). (`is_x86_feature_detected!`
/// does not take the AMX names on stable Rust.)
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn cpu_has_amx_bf16() -> bool {
    // (CPUID is safe on x86_64; leaf 7 is meaningful when leaf 0 reports it.)
    let (max, edx) = (
        std::arch::x86_64::__cpuid(0).eax,
        std::arch::x86_64::__cpuid_count(7, 0).edx,
    );
    max >= 7 && edx & (1 << 22) != 0 && edx & (1 << 24) != 0
}

/// Asks Linux for permission to use the AMX tile data (process-wide; Linux ≥ 5.16).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_state() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with ARCH_REQ_XCOMP_PERM only changes this process's permitted
    // extended state; it reads no memory of ours.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

/// The 64-byte tile configuration (palette 1): tmm0–7 all 16 rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

const CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// One 32 × 32 block of C from A slivers `2·bi, 2·bi+1` and B slivers `2·bj, 2·bj+1` over
/// `kb` k blocks, into `acc` (row-major 32 × 32 f32).
///
/// # Safety
/// The tile configuration [`CONFIG`] is loaded on this thread; `pa` holds the A slivers and
/// `pb` the B slivers named (each `kb * TILE` long).
#[cfg(target_arch = "x86_64")]
unsafe fn block(
    pa: &[bf16],
    pb: &[bf16],
    (bi, bj, kb): (usize, usize, usize),
    acc: &mut [f32; 1024],
) {
    use std::arch::asm;
    let a0 = pa[2 * bi * kb * TILE..].as_ptr();
    let a1 = pa[(2 * bi + 1) * kb * TILE..].as_ptr();
    let b0 = pb[2 * bj * kb * TILE..].as_ptr();
    let b1 = pb[(2 * bj + 1) * kb * TILE..].as_ptr();
    let stride = 64usize;
    // SAFETY (all blocks): the configuration is loaded; each load reads one 1 KiB tile inside
    // the packed slivers (k block `b` < `kb`); the stores write 16 rows of 64 bytes inside
    // `acc` (128-byte rows).
    unsafe {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack)
        );
        for b in 0..kb {
            let o = b * TILE;
            asm!(
                "tileloadd tmm4, [{a0} + {s}*1]",
                "tileloadd tmm5, [{a1} + {s}*1]",
                "tileloadd tmm6, [{b0} + {s}*1]",
                "tileloadd tmm7, [{b1} + {s}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                a0 = in(reg) a0.add(o),
                a1 = in(reg) a1.add(o),
                b0 = in(reg) b0.add(o),
                b1 = in(reg) b1.add(o),
                s = in(reg) stride,
                options(nostack, readonly),
            );
        }
        let c = acc.as_mut_ptr();
        asm!(
            "tilestored [{c00} + {s}*1], tmm0",
            "tilestored [{c01} + {s}*1], tmm1",
            "tilestored [{c10} + {s}*1], tmm2",
            "tilestored [{c11} + {s}*1], tmm3",
            c00 = in(reg) c,
            c01 = in(reg) c.add(TN),
            c10 = in(reg) c.add(TM * 32),
            c11 = in(reg) c.add(TM * 32 + TN),
            s = in(reg) 128usize,
            options(nostack),
        );
    }
}

/// [`block`] for operands split into two bf16 parts each ([`Parts`]): A parts `pa = [hi, lo]`,
/// B parts `pb = [hi, lo]`. The products of the high parts accumulate on tiles of their own,
/// the three others (each at most 2^-8 of them) together on a second set, and the two sums are
/// added once at the end: the large sums see one rounding per k pair, as in [`block`], not
/// four, and the small ones' roundings are 2^-8 as large — so the f32 GEMM bound holds. Two
/// 32 × 16 halves in turn, each on two high and two low accumulators, two A tiles (high parts,
/// then low) and both parts of one B sliver.
///
/// # Safety
/// As [`block`], for each part.
#[cfg(target_arch = "x86_64")]
unsafe fn block_split(
    pa: [&[bf16]; 2],
    pb: [&[bf16]; 2],
    (bi, bj, kb): (usize, usize, usize),
    acc: &mut [f32; 1024],
) {
    use std::arch::asm;
    let sliver = |p: &[bf16], s: usize| p[s * kb * TILE..].as_ptr();
    let (ah0, ah1) = (sliver(pa[0], 2 * bi), sliver(pa[0], 2 * bi + 1));
    let (al0, al1) = (sliver(pa[1], 2 * bi), sliver(pa[1], 2 * bi + 1));
    let mut small = [0f32; 512];
    for half in 0..2 {
        let (bh, bl) = (sliver(pb[0], 2 * bj + half), sliver(pb[1], 2 * bj + half));
        // SAFETY: as in `block`: the configuration is loaded, each load reads one tile inside
        // a packed sliver, the stores write 16 rows of 64 bytes inside `acc` (128-byte rows,
        // from column 16·half) and `small` (64-byte rows).
        unsafe {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack)
            );
            for b in 0..kb {
                let o = b * TILE;
                asm!(
                    "tileloadd tmm4, [{ah0} + {s}*1]",
                    "tileloadd tmm5, [{ah1} + {s}*1]",
                    "tileloadd tmm6, [{bh} + {s}*1]",
                    "tileloadd tmm7, [{bl} + {s}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm5, tmm6",
                    "tdpbf16ps tmm2, tmm4, tmm7",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    "tileloadd tmm4, [{al0} + {s}*1]",
                    "tileloadd tmm5, [{al1} + {s}*1]",
                    "tdpbf16ps tmm2, tmm4, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm6",
                    "tdpbf16ps tmm2, tmm4, tmm7",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    ah0 = in(reg) ah0.add(o),
                    ah1 = in(reg) ah1.add(o),
                    al0 = in(reg) al0.add(o),
                    al1 = in(reg) al1.add(o),
                    bh = in(reg) bh.add(o),
                    bl = in(reg) bl.add(o),
                    s = in(reg) 64usize,
                    options(nostack, readonly),
                );
            }
            let (c, t) = (acc.as_mut_ptr().add(16 * half), small.as_mut_ptr());
            asm!(
                "tilestored [{c0} + {s}*1], tmm0",
                "tilestored [{c1} + {s}*1], tmm1",
                "tilestored [{t0} + {u}*1], tmm2",
                "tilestored [{t1} + {u}*1], tmm3",
                c0 = in(reg) c,
                c1 = in(reg) c.add(TM * 32),
                t0 = in(reg) t,
                t1 = in(reg) t.add(TM * 16),
                s = in(reg) 128usize,
                u = in(reg) 64usize,
                options(nostack),
            );
        }
        for (row, add) in acc.chunks_exact_mut(32).zip(small.chunks_exact(16)) {
            row[16 * half..][..16]
                .iter_mut()
                .zip(add)
                .for_each(|(v, a)| *v += a);
        }
    }
}

/// Rows of `acc` (32 × 32, row-major) into columns `c0..c0 + cols` (`cols` ≤ 32) of the
/// `n`-wide rows of `rows`, added or stored: two masked 16-lane stores a row (a `memmove` call
/// per row of a copy cost a weight gradient's write-back 4× the dot products' time at small
/// images).
///
/// # Safety
/// The CPU has AVX-512F; `c0 + cols ≤ n`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn store_block(
    acc: &[f32; 1024],
    rows: &mut [f32],
    n: usize,
    c0: usize,
    cols: usize,
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    let masks = [
        super::skinny::mask16(cols),
        super::skinny::mask16(cols.saturating_sub(16)),
    ];
    for (i, row) in rows.chunks_exact_mut(n).enumerate() {
        let out = row[c0..][..cols].as_mut_ptr();
        for (h, &mask) in masks.iter().enumerate() {
            // SAFETY: the masks select columns `< cols` of the row's `c0..` and of `acc`'s
            // row `i` (masked-off lanes are not accessed).
            unsafe {
                let (o, s) = (out.wrapping_add(16 * h), acc.as_ptr().add(i * 32 + 16 * h));
                let mut v = _mm512_maskz_loadu_ps(mask, s);
                if accumulate {
                    v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, o));
                }
                _mm512_mask_storeu_ps(o, mask, v);
            }
        }
    }
}

thread_local! {
    /// The packed B of the calling thread's product, reused across calls.
    static PACKED_B: std::cell::RefCell<Vec<bf16>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The packed A of the calling thread's product when packed whole, reused across calls.
    static A_WHOLE: std::cell::RefCell<Vec<bf16>> = const { std::cell::RefCell::new(Vec::new()) };
    /// A worker's packed panel of A (two slivers), reused across blocks and calls.
    static A_PANEL: std::cell::RefCell<Vec<bf16>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `buf` grown to at least `len` elements (never shrunk or zero-filled per call: the packers
/// write every element they hand on), as its first `len`.
fn grown(buf: &mut Vec<bf16>, len: usize) -> &mut [bf16] {
    if buf.len() < len {
        buf.resize(len, bf16::ZERO);
    }
    &mut buf[..len]
}

/// A GEMM operand's element as the bf16 parts whose sum is its value exactly: one for bf16
/// (and for an f32 rounded to bf16 as it is packed), two for f16 ([`Hi`] and [`Lo`]; also for
/// an f32 rounded to f16 as it is packed). A product of two operands is the sum of the
/// products of their parts, each exact in f32.
pub(crate) trait Parts: Copy + Send + Sync + 'static {
    /// How many parts (1 or 2).
    const COUNT: usize;
    /// The value the parts sum to, as f32 (exact).
    fn value(self) -> f32;
    /// Packs part `part` of A (see [`pack_a`]).
    fn pack_a_part(
        a: &[Self],
        strides: (usize, usize),
        extent: (usize, usize),
        first: usize,
        out: &mut [bf16],
        part: usize,
    );
    /// Packs part `part` of B (see [`pack_b`]).
    fn pack_b_part(
        b: &[Self],
        strides: (usize, usize),
        extent: (usize, usize),
        out: &mut [bf16],
        part: usize,
    );
}

macro_rules! parts {
    ($t:ty, 1) => {
        impl Parts for $t {
            const COUNT: usize = 1;
            fn value(self) -> f32 {
                self.to_bf16().to_f32()
            }
            fn pack_a_part(
                a: &[$t],
                s: (usize, usize),
                e: (usize, usize),
                first: usize,
                out: &mut [bf16],
                _: usize,
            ) {
                pack_a(a, s, e, first, out)
            }
            fn pack_b_part(
                b: &[$t],
                s: (usize, usize),
                e: (usize, usize),
                out: &mut [bf16],
                _: usize,
            ) {
                pack_b(b, s, e, out)
            }
        }
    };
    ($t:ty, 2) => {
        impl Parts for $t {
            const COUNT: usize = 2;
            fn value(self) -> f32 {
                super::sgemm_pack::PackSrc::to_f32(self)
            }
            fn pack_a_part(
                a: &[$t],
                s: (usize, usize),
                e: (usize, usize),
                first: usize,
                out: &mut [bf16],
                part: usize,
            ) {
                match part {
                    0 => pack_a(Hi::wrap_slice(a), s, e, first, out),
                    _ => pack_a(Lo::wrap_slice(a), s, e, first, out),
                }
            }
            fn pack_b_part(
                b: &[$t],
                s: (usize, usize),
                e: (usize, usize),
                out: &mut [bf16],
                part: usize,
            ) {
                match part {
                    0 => pack_b(Hi::wrap_slice(b), s, e, out),
                    _ => pack_b(Lo::wrap_slice(b), s, e, out),
                }
            }
        }
    };
}
parts!(bf16, 1);
parts!(RoundedBf16, 1);
parts!(f16, 2);
parts!(RoundedF16, 2);

/// `dst[m × n] (+)= A · B` for bf16 operands with element strides (row, col), f32 `dst`
/// contiguous; the operands hold every element the strides address (as for `gemm_strided`:
/// an empty product does nothing, `k = 0` zeroes `dst` unless accumulating). A may be f32
/// rounded to bf16 as it is packed ([`RoundedBf16`](super::amx_pack::RoundedBf16)). Parallel
/// over 32 × 32 blocks of C when `parallel`. On the CPU's [`engine`]; the caller checks that
/// there is one.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_bf16<A: AmxSrc + Parts>(
    shape: (usize, usize, usize),
    dst: &mut [f32],
    a: &[A],
    a_strides: (usize, usize),
    b: &[bf16],
    b_strides: (usize, usize),
    accumulate: bool,
    parallel: bool,
) {
    let engine = engine().expect("gemm_bf16 needs AMX or AVX512-BF16");
    let (operands, strides) = ((a, b), (a_strides, b_strides));
    gemm_bf16_on(engine, shape, dst, operands, strides, accumulate, parallel);
}

/// `dst[m × n] (+)= A · B` for f16 operands (A may be f32 rounded to f16 as it is packed,
/// [`RoundedF16`]) on AMX tiles, each operand split into two bf16 parts ([`Hi`], [`Lo`]): the
/// four products of parts are exact, so C holds f32 sums of the exact f16 products — the f32
/// GEMM bound of DESIGN.md (`K · 2^-23 · Σ|a||b|`), as the widening f32 kernel. An infinite
/// or NaN operand makes its sums NaN on the tiles (its low part is 0, and `inf · 0` is NaN)
/// where f32 arithmetic may give an infinity, so every NaN sum is computed again from the
/// widened operands in f32 ([`redo_nan_sums`]): non-finite results are those of the f32 GEMM,
/// as in PyTorch. Four tile products per k step instead of one; the packing (twice the bf16
/// one) still dominates (see the module notes). Requires [`available`]; otherwise as
/// [`gemm_bf16`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_f16<A: Parts>(
    shape: (usize, usize, usize),
    dst: &mut [f32],
    a: &[A],
    a_strides: (usize, usize),
    b: &[f16],
    b_strides: (usize, usize),
    accumulate: bool,
    parallel: bool,
) {
    let (operands, strides) = ((a, b), (a_strides, b_strides));
    gemm_parts(
        Engine::Amx,
        shape,
        dst,
        operands,
        strides,
        accumulate,
        parallel,
    );
}

/// [`gemm_bf16`] on `engine`, which this CPU must have.
fn gemm_bf16_on<A: AmxSrc + Parts>(
    engine: Engine,
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    (a, b): (&[A], &[bf16]),
    (a_strides, b_strides): ((usize, usize), (usize, usize)),
    accumulate: bool,
    parallel: bool,
) {
    check_operands(
        engine,
        (m, n, k),
        dst.len(),
        (a.len(), b.len()),
        (a_strides, b_strides),
    );
    #[cfg(target_arch = "x86_64")]
    if engine == Engine::Dot && m * n * k > 0 && super::skinny::applies(n, a_strides) {
        // (At most 8 columns: A read in place, see `skinny`.)
        let (operands, strides) = ((a, b), (a_strides, b_strides));
        use super::{bf16_skinny::Bf16Dot, skinny::gemm};
        return gemm::<_, _, Bf16Dot>((m, n, k), dst, operands, strides, accumulate, parallel);
    }
    let (operands, strides) = ((a, b), (a_strides, b_strides));
    gemm_parts(
        engine,
        (m, n, k),
        dst,
        operands,
        strides,
        accumulate,
        parallel,
    );
}

/// What every entry asserts before its kernels read the operands through raw pointers: the
/// engine is present, `dst` holds `m × n`, and (for a non-empty product) each operand holds
/// every element its strides address.
fn check_operands(
    engine: Engine,
    (m, n, k): (usize, usize, usize),
    dst_len: usize,
    (a_len, b_len): (usize, usize),
    (a_strides, b_strides): ((usize, usize), (usize, usize)),
) {
    assert!(engine.present(), "gemm_bf16: this CPU lacks {engine:?}");
    assert!(dst_len >= m * n, "gemm_bf16: dst too small");
    if m * n * k > 0 {
        assert!(a_len > (m - 1) * a_strides.0 + (k - 1) * a_strides.1);
        assert!(b_len > (k - 1) * b_strides.0 + (n - 1) * b_strides.1);
    }
}

/// The blocked GEMM of [`gemm_bf16`] and [`gemm_f16`] over the operands' [`Parts`] on
/// `engine` (two-part operands on AMX only).
fn gemm_parts<A: Parts, B: Parts>(
    engine: Engine,
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    (a, b): (&[A], &[B]),
    (a_strides, b_strides): ((usize, usize), (usize, usize)),
    accumulate: bool,
    parallel: bool,
) {
    check_operands(
        engine,
        (m, n, k),
        dst.len(),
        (a.len(), b.len()),
        (a_strides, b_strides),
    );
    let amx = engine == Engine::Amx;
    assert!(
        A::COUNT == B::COUNT,
        "gemm_bf16: operands of {} and {} parts",
        A::COUNT,
        B::COUNT
    );
    assert!(amx || A::COUNT == 1, "split operands need AMX");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    let (nb, kb) = (n.div_ceil(2 * TN), k.div_ceil(TK));
    let b_len = 2 * nb * kb * TILE;
    let mut pb = PACKED_B.with(|s| std::mem::take(&mut *s.borrow_mut()));
    for (part, out) in grown(&mut pb, B::COUNT * b_len)
        .chunks_exact_mut(b_len)
        .enumerate()
    {
        B::pack_b_part(b, b_strides, (k, n), out, part);
    }
    let b_parts: [&[bf16]; 2] = std::array::from_fn(|p| &pb[p.min(B::COUNT - 1) * b_len..]);
    // A row-major A (a weight in a forward pass, an output gradient) is packed panel by panel
    // (32 rows): each row block packs its own two slivers right before its blocks of C use
    // them, so the panel stays in this core's cache (packing all of A up front wrote it out to
    // memory and read it back: at small images the whole step's largest operand, the weight).
    // A column-major A (the transposed weight of an input gradient) is packed whole, up front,
    // each thread a run of slivers k block by k block: a panel alone would read 128 bytes from
    // each of `k` rows far apart (measured: its packing took twice as long).
    let mut pa_whole = A_WHOLE.with(|s| std::mem::take(&mut *s.borrow_mut()));
    let whole = a_strides.1 != 1;
    let slivers = 2 * m.div_ceil(2 * TM);
    let a_len = if whole { slivers } else { 2 } * kb * TILE;
    if whole {
        let group = slivers.div_ceil(rayon::current_num_threads()).max(1);
        let packed = grown(&mut pa_whole, A::COUNT * a_len);
        for (part, out) in packed.chunks_exact_mut(a_len).enumerate() {
            out.par_chunks_mut(group * kb * TILE)
                .enumerate()
                .for_each(|(gi, out)| A::pack_a_part(a, a_strides, (m, k), gi * group, out, part));
        }
    }
    let packed_a = &pa_whole;
    #[cfg(target_arch = "x86_64")]
    let fast = super::convert::avx512();
    let run_row = |bi: usize, rows: &mut [f32]| {
        A_PANEL.with(|panel| {
            let mut panel = panel.borrow_mut();
            // (`si`: the row block's sliver pair in `pa`.)
            let (pa, si) = if whole {
                (&packed_a[..], bi)
            } else {
                let pa = grown(&mut panel, A::COUNT * a_len);
                for (part, out) in pa.chunks_exact_mut(a_len).enumerate() {
                    A::pack_a_part(a, a_strides, (m, k), 2 * bi, out, part);
                }
                (&pa[..], 0)
            };
            let a_parts: [&[bf16]; 2] = std::array::from_fn(|p| &pa[p.min(A::COUNT - 1) * a_len..]);
            let mut acc = [0f32; 1024];
            #[cfg(target_arch = "x86_64")]
            if amx {
                // SAFETY: AMX is available (asserted) and the configuration is loaded for the
                // blocks below and released after them, on this thread.
                unsafe {
                    std::arch::asm!("ldtilecfg [{0}]", in(reg) &CONFIG, options(nostack, readonly));
                }
            }
            for bj in 0..nb {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the engine is available (asserted; for AMX the configuration is
                // loaded); each part of `pa` holds A slivers 2·si and 2·si+1, and slivers
                // 2·bj+1 < 2·nb of each part of B exist.
                unsafe {
                    if amx && A::COUNT == 2 {
                        block_split(a_parts, b_parts, (si, bj, kb), &mut acc)
                    } else if amx {
                        block(pa, &pb, (si, bj, kb), &mut acc)
                    } else {
                        super::bf16_dot::block(pa, &pb, (si, bj, kb), k, &mut acc)
                    }
                };
                let cols = (n - bj * 2 * TN).min(2 * TN);
                if A::COUNT > 1 && acc.iter().fold(false, |f, v| f | v.is_nan()) {
                    let origin = (bi * 2 * TM, bj * 2 * TN);
                    let extent = (rows.len() / n, cols);
                    let operands = ((a, a_strides), (b, b_strides));
                    redo_nan_sums(&mut acc, origin, extent, operands, k);
                }
                #[cfg(target_arch = "x86_64")]
                if fast {
                    // SAFETY: AVX-512F detected; `rows` holds whole rows of `n` ≥ 32·bj + cols.
                    unsafe { store_block(&acc, rows, n, bj * 2 * TN, cols, accumulate) };
                    continue;
                }
                for (i, row) in rows.chunks_exact_mut(n).enumerate() {
                    let out = &mut row[bj * 2 * TN..][..cols];
                    let src = &acc[i * 32..][..cols];
                    if accumulate {
                        out.iter_mut().zip(src).for_each(|(o, s)| *o += s);
                    } else {
                        out.copy_from_slice(src);
                    }
                }
            }
            #[cfg(target_arch = "x86_64")]
            if amx {
                // SAFETY: releases this thread's tile state.
                unsafe {
                    std::arch::asm!("tilerelease", options(nostack, nomem));
                }
            }
        })
    };
    let dst = &mut dst[..m * n];
    if parallel {
        dst.par_chunks_mut(2 * TM * n)
            .enumerate()
            .for_each(|(bi, rows)| run_row(bi, rows));
    } else {
        dst.chunks_mut(2 * TM * n)
            .enumerate()
            .for_each(|(bi, rows)| run_row(bi, rows));
    }
    PACKED_B.with(|s| *s.borrow_mut() = pb);
    A_WHOLE.with(|s| *s.borrow_mut() = pa_whole);
}

/// An operand and its element strides (row, column).
type Strided<'a, T> = (&'a [T], (usize, usize));

/// Recomputes, from the widened operands in f32 (k in order), each sum of the block of C at
/// `origin` (`extent` rows × columns of it valid) that came out NaN on the tiles: for split
/// operands a NaN there may be an infinity in f32 arithmetic (see [`gemm_f16`]).
fn redo_nan_sums<A: Parts, B: Parts>(
    acc: &mut [f32; 1024],
    (r0, c0): (usize, usize),
    (rows, cols): (usize, usize),
    ((a, (ars, acs)), (b, (brs, bcs))): (Strided<'_, A>, Strided<'_, B>),
    k: usize,
) {
    for i in 0..rows {
        for j in 0..cols {
            if acc[i * 32 + j].is_nan() {
                let (ai, bj) = ((r0 + i) * ars, (c0 + j) * bcs);
                acc[i * 32 + j] = (0..k).fold(0.0, |s, p| {
                    s + a[ai + p * acs].value() * b[p * brs + bj].value()
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Odd sizes across every tile edge, both operand layouts, overwrite and accumulate,
    /// against an f64 reference of the bf16 operands within the GEMM bound, on AMX.
    #[test]
    fn matches_f64_reference_at_odd_sizes() {
        if !available() {
            println!("skipped: this CPU has no AMX-BF16 (or Linux refused the tile state)");
            return;
        }
        check_engine(Engine::Amx);
    }

    /// The same on AVX512-BF16 dot products.
    #[test]
    fn dot_products_match_f64_reference_at_odd_sizes() {
        if !super::super::bf16_dot::available() {
            println!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        check_engine(Engine::Dot);
    }

    /// f16 operands split into bf16 parts (`gemm_f16`): odd sizes, both layouts, overwrite and
    /// accumulate, against the f64 reference within the f32 GEMM bound (dropping a low part
    /// would err by ~2^-9 of a term: far outside it).
    #[test]
    fn f16_splits_match_f64_reference_at_odd_sizes() {
        if !available() {
            println!("skipped: this CPU has no AMX-BF16 (or Linux refused the tile state)");
            return;
        }
        let mut rnd = super::super::gemm_check::uniform(0xD1B5_4A32_D192_ED03);
        super::super::gemm_check::check_against_f64(
            &[
                (1, 1, 1),
                (17, 33, 7),
                (37, 65, 300),
                (64, 96, 64),
                (5, 200, 33),
            ],
            || f16::from_f32(rnd() * 3.0),
            f16::to_f64,
            &|shape, c, a, sa, b, sb, accumulate, trans| {
                gemm_f16(shape, c, a, sa, b, sb, accumulate, trans)
            },
        );
    }

    /// Infinities and NaNs in split f16 operands give the f32 GEMM's results: an infinity
    /// where every product it enters is nonzero and of one sign, NaN where it meets a zero or
    /// the opposite infinity or a NaN — not the NaN the tiles alone give (`inf · 0` of a
    /// zero low part); finite sums stay within the bound.
    #[test]
    fn f16_non_finite_operands_give_f32_results() {
        if !available() {
            println!("skipped: this CPU has no AMX-BF16 (or Linux refused the tile state)");
            return;
        }
        let (m, n, k) = (37, 41, 45);
        let mut rnd = super::super::gemm_check::uniform(0x94D0_49BB_1331_11EB);
        let mut a: Vec<f16> = (0..m * k).map(|_| f16::from_f32(rnd())).collect();
        let mut b: Vec<f16> = (0..k * n).map(|_| f16::from_f32(rnd())).collect();
        a[3 * k + 5] = f16::INFINITY; // row 3: ±inf where column's b[5] is nonzero
        a[7 * k + 2] = f16::INFINITY; // row 7: inf and -inf: NaN
        a[7 * k + 9] = f16::NEG_INFINITY;
        a[11 * k + 4] = f16::NAN; // row 11: NaN
        b[5 * n + 6] = f16::ZERO; // (3, 6): inf · 0: NaN
        b[5 * n + 8] = f16::from_f32(0.75); // (3, 8): inf (b's low part 0)
        b[20 * n + 30] = f16::NEG_INFINITY; // column 30: -inf ⋅ a[i][20]
        for (sa, sb) in [((k, 1), (n, 1)), ((1, m), (1, k))] {
            let (at, bt) = if sa.0 == 1 {
                let at: Vec<f16> = (0..m * k).map(|q| a[(q % m) * k + q / m]).collect();
                let bt: Vec<f16> = (0..k * n).map(|q| b[(q % k) * n + q / k]).collect();
                (at, bt)
            } else {
                (a.clone(), b.clone())
            };
            let mut c = vec![0f32; m * n];
            gemm_f16((m, n, k), &mut c, &at, sa, &bt, sb, false, true);
            let mut non_finite = 0;
            for i in 0..m {
                for j in 0..n {
                    let terms = (0..k).map(|p| a[i * k + p].to_f64() * b[p * n + j].to_f64());
                    let (r, mag) = terms.fold((0.0, 0.0), |(r, g), t| (r + t, g + t.abs()));
                    let got = c[i * n + j] as f64;
                    if r.is_finite() {
                        let bound = (k + 1) as f64 * 2f64.powi(-23) * mag;
                        assert!((got - r).abs() <= bound, "({i},{j}): {got} vs {r}");
                    } else {
                        non_finite += 1;
                        let same = (got.is_nan() && r.is_nan()) || got == r;
                        assert!(same, "{sa:?} ({i},{j}): {got} vs {r}");
                    }
                }
            }
            assert!(non_finite > 3 * n, "{non_finite} non-finite sums");
        }
    }

    fn check_engine(engine: Engine) {
        let mut rnd = super::super::gemm_check::uniform(0x9E37_79B9_7F4A_7C15);
        super::super::gemm_check::check_against_f64(
            &[
                (1, 1, 1),
                (17, 33, 7),
                (37, 65, 300),
                (64, 96, 64),
                (5, 200, 33),
            ],
            || bf16::from_f32(rnd()),
            bf16::to_f64,
            &|shape, c, a, sa, b, sb, accumulate, trans| {
                gemm_bf16_on(engine, shape, c, (a, b), (sa, sb), accumulate, trans)
            },
        );
    }
}
