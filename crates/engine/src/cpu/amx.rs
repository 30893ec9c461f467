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

use super::amx_pack::{pack_a, pack_b};
use half::bf16;
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

/// `dst[m × n] (+)= A · B` for bf16 operands with element strides (row, col), f32 `dst`
/// contiguous; the operands hold every element the strides address (as for `gemm_strided`:
/// an empty product does nothing, `k = 0` zeroes `dst` unless accumulating). A may be f32
/// rounded to bf16 as it is packed ([`RoundedBf16`](super::amx_pack::RoundedBf16)). Parallel
/// over 32 × 32 blocks of C when `parallel`. On the CPU's [`engine`]; the caller checks that
/// there is one.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_bf16<A: super::amx_pack::AmxSrc>(
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

/// [`gemm_bf16`] on `engine`, which this CPU must have.
fn gemm_bf16_on<A: super::amx_pack::AmxSrc>(
    engine: Engine,
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    (a, b): (&[A], &[bf16]),
    (a_strides, b_strides): ((usize, usize), (usize, usize)),
    accumulate: bool,
    parallel: bool,
) {
    assert!(engine.present(), "gemm_bf16: this CPU lacks {engine:?}");
    let amx = engine == Engine::Amx;
    assert!(dst.len() >= m * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    assert!(a.len() > (m - 1) * a_strides.0 + (k - 1) * a_strides.1);
    assert!(b.len() > (k - 1) * b_strides.0 + (n - 1) * b_strides.1);
    #[cfg(target_arch = "x86_64")]
    if !amx && super::skinny::applies(n, a_strides) {
        // (At most 8 columns: A read in place, see `skinny`.)
        let (operands, strides) = ((a, b), (a_strides, b_strides));
        use super::{bf16_skinny::Bf16Dot, skinny::gemm};
        return gemm::<_, _, Bf16Dot>((m, n, k), dst, operands, strides, accumulate, parallel);
    }
    let (nb, kb) = (n.div_ceil(2 * TN), k.div_ceil(TK));
    let mut pb = PACKED_B.with(|s| std::mem::take(&mut *s.borrow_mut()));
    pack_b(b, b_strides, (k, n), grown(&mut pb, 2 * nb * kb * TILE));
    // A row-major A (a weight in a forward pass, an output gradient) is packed panel by panel
    // (32 rows): each row block packs its own two slivers right before its blocks of C use
    // them, so the panel stays in this core's cache (packing all of A up front wrote it out to
    // memory and read it back: at small images the whole step's largest operand, the weight).
    // A column-major A (the transposed weight of an input gradient) is packed whole, up front,
    // each thread a run of slivers k block by k block: a panel alone would read 128 bytes from
    // each of `k` rows far apart (measured: its packing took twice as long).
    let mut pa_whole = A_WHOLE.with(|s| std::mem::take(&mut *s.borrow_mut()));
    let whole = a_strides.1 != 1;
    if whole {
        let slivers = 2 * m.div_ceil(2 * TM);
        let group = slivers.div_ceil(rayon::current_num_threads()).max(1);
        grown(&mut pa_whole, slivers * kb * TILE)
            .par_chunks_mut(group * kb * TILE)
            .enumerate()
            .for_each(|(gi, out)| pack_a(a, a_strides, (m, k), gi * group, out));
    }
    let packed_a = &pa_whole;
    #[cfg(target_arch = "x86_64")]
    let fast = super::convert::avx512();
    let run_row = |bi: usize, rows: &mut [f32]| {
        A_PANEL.with(|panel| {
            let mut panel = panel.borrow_mut();
            let (pa, bi) = if whole {
                (&packed_a[..], bi)
            } else {
                let pa = grown(&mut panel, 2 * kb * TILE);
                pack_a(a, a_strides, (m, k), 2 * bi, pa);
                (&pa[..], 0)
            };
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
                // loaded); `pa` holds A slivers 2·bi and 2·bi+1, and slivers 2·bj+1 < 2·nb of
                // B exist.
                unsafe {
                    if amx {
                        block(pa, &pb, (bi, bj, kb), &mut acc)
                    } else {
                        super::bf16_dot::block(pa, &pb, (bi, bj, kb), k, &mut acc)
                    }
                };
                let cols = (n - bj * 2 * TN).min(2 * TN);
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
