//! CPU matrix products through the `gemm` crate (f32 and f64 kernels) and our own kernels
//! (`sgemm`, `amx`, `skinny`). F16/BF16 operands are widened to f32 (exact) — or multiplied
//! exactly on bf16 units — with f32 accumulation and rounded once at the output, so the result
//! obeys DESIGN.md's GEMM bound with `u_out` of the output dtype.

use super::compute::{host, map_compute, to_f64_vec, Compute};
use super::sgemm_pack::PackSrc;
use super::wrap;
use crate::backend::{check_gemm, check_matmul, GemmEpilogue, MatmulSpec};
use crate::{CpuStorage, Error, Layout, Result, StorageRef};
use gemm::Parallelism;
use half::{bf16, f16};

/// `dst[m, n] = lhs[m, k] · rhs[k, n]` with element strides (row, col) for each operand;
/// `dst` is contiguous. All slices must cover the addressed elements (checked by callers).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_strided<T: 'static + Copy + num_traits::Zero + num_traits::One>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    lhs: &[T],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[T],
    (rhs_rs, rhs_cs): (usize, usize),
    accumulate: bool,
    parallel: bool,
) {
    assert!(dst.len() >= m * n, "gemm_strided: dst too small");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].iter_mut().for_each(|x| *x = T::zero());
        }
        return;
    }
    assert!(
        lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs,
        "gemm_strided: lhs too small"
    );
    assert!(
        rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs,
        "gemm_strided: rhs too small"
    );
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() && super::sgemm::suits((m, n)) {
        // SAFETY: `T` is `f32` (same TypeId), so these are the same slices retyped.
        let (dst, lhs, rhs) = unsafe {
            (
                std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<f32>(), dst.len()),
                std::slice::from_raw_parts(lhs.as_ptr().cast::<f32>(), lhs.len()),
                std::slice::from_raw_parts(rhs.as_ptr().cast::<f32>(), rhs.len()),
            )
        };
        let (ls, rs) = ((lhs_rs, lhs_cs), (rhs_rs, rhs_cs));
        super::sgemm::sgemm((m, n, k), dst, lhs, ls, rhs, rs, accumulate, parallel);
        return;
    }
    let par = if parallel && m * n * k >= 1 << 18 {
        Parallelism::Rayon(rayon::current_num_threads())
    } else {
        Parallelism::None
    };
    // SAFETY: the asserts above show every element addressed through the strides lies in the
    // slices; `dst` is exclusively borrowed and does not alias the inputs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            par,
        );
    }
}

/// The elements an `m × k` operand with strides `(rs, cs)` spans from its first one (0 when
/// empty).
pub(crate) fn span((m, k): (usize, usize), (rs, cs): (usize, usize)) -> usize {
    match m * k {
        0 => 0,
        _ => (m - 1) * rs + (k - 1) * cs + 1,
    }
}

/// [`gemm_strided`] for f16 operands into an f32 `dst` (A may also be f32 rounded to f16 on
/// the way in, [`RoundedF16`](super::sgemm_pack::RoundedF16)): at most 8 columns through the
/// AVX-512 skinny kernel; else on AMX tiles where the CPU has them (each operand split into two
/// exact bf16 parts, [`amx::gemm_f16`](super::amx::gemm_f16)); else as [`gemm_packed`]. Every
/// path gives f32 sums of the exact products: DESIGN.md's GEMM bound, and the f32 GEMM's
/// infinities and NaNs.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_f16<A: PackSrc + super::amx::Parts>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    lhs: &[A],
    ls: (usize, usize),
    rhs: &[f16],
    rs: (usize, usize),
    accumulate: bool,
    parallel: bool,
) {
    checked_extents((m, n, k), dst.len(), (lhs.len(), ls), (rhs.len(), rs));
    #[cfg(target_arch = "x86_64")]
    if m > 0 && n > 0 && k > 0 && A::simd() && f16::simd() && super::skinny::applies(n, ls) {
        // At most 8 columns (a late layer at small images: 512 × 4 × 4608): A read in place,
        // widened in registers, `n` not padded (see `skinny`).
        use super::{f16_skinny::F16Fma, skinny::gemm};
        gemm::<_, _, F16Fma>((m, n, k), dst, (lhs, rhs), (ls, rs), accumulate, parallel);
        return;
    }
    if m * n * k > 0 && f16_on_amx() {
        // Each operand split into two bf16 parts, four exact tile products (see
        // `amx::gemm_f16`).
        super::amx::gemm_f16((m, n, k), dst, lhs, ls, rhs, rs, accumulate, parallel);
        return;
    }
    gemm_packed((m, n, k), dst, lhs, ls, rhs, rs, accumulate, parallel);
}

/// [`gemm_strided`] for bf16 operands into an f32 `dst` (A may also be f32 rounded to bf16 on
/// the way in, [`RoundedBf16`](super::amx_pack::RoundedBf16)): on AMX or AVX512-BF16 where the
/// CPU has one ([`amx::gemm_bf16`](super::amx::gemm_bf16): exact bf16 products, f32 sums,
/// values below 2^-126 flushed as those units do), else as [`gemm_packed`] (exact f32
/// arithmetic on the widened values). Within DESIGN.md's GEMM bound either way.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_bf16<A: PackSrc + super::amx_pack::AmxSrc + super::amx::Parts>(
    shape: (usize, usize, usize),
    dst: &mut [f32],
    lhs: &[A],
    ls: (usize, usize),
    rhs: &[bf16],
    rs: (usize, usize),
    accumulate: bool,
    parallel: bool,
) {
    if super::amx::engine().is_some() {
        super::amx::gemm_bf16(shape, dst, lhs, ls, rhs, rs, accumulate, parallel);
    } else {
        gemm_packed(shape, dst, lhs, ls, rhs, rs, accumulate, parallel);
    }
}

/// A half-precision product (`B` f16 or bf16; `A` the same, or an f32 weight rounded to it as
/// read) with no unit of its own on this CPU, into f32 (extents checked: a panic, as for any
/// slice, when an operand is too short): at
/// most 8 columns through the AVX2 skinny kernel where there is AVX2 (f16 products reach it
/// only without AVX-512; A read in place, widened or rounded in registers); else through our
/// f32 GEMM (`sgemm`: the AVX-512 tile, or the AVX2 one), which widens or rounds the operands
/// (exactly as a cast would) while packing, where the CPU has one and the shape suits it;
/// elsewhere the addressed extents are widened into f32 copies for the `gemm` crate. f32 sums
/// of exact products either way.
#[allow(clippy::too_many_arguments)]
fn gemm_packed<A: PackSrc, B: PackSrc>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    lhs: &[A],
    ls: (usize, usize),
    rhs: &[B],
    rs: (usize, usize),
    accumulate: bool,
    parallel: bool,
) {
    let (ea, eb) = checked_extents((m, n, k), dst.len(), (lhs.len(), ls), (rhs.len(), rs));
    let nonempty = m > 0 && n > 0 && k > 0;
    let avx2 = A::avx2() && B::avx2();
    #[cfg(target_arch = "x86_64")]
    if nonempty && avx2 && super::skinny::applies(n, ls) {
        // (Where the AVX-512 unit serves, `gemm_f16` took this product already.)
        use super::{half_skinny_avx2::WidenFma8, skinny::gemm};
        gemm::<_, _, WidenFma8>((m, n, k), dst, (lhs, rhs), (ls, rs), accumulate, parallel);
        return;
    }
    let tile_suits = m >= super::sgemm::NR || super::sgemm::suits_shape((m, n));
    if nonempty && ((A::simd() && B::simd()) || avx2) && tile_suits {
        // (From n = 32 on: at 8 × 64 px the last stage's n = 32 products would otherwise
        // widen their 512 × 4608 weights first. Half A is packed even then: only f32 is read
        // in place.) A product narrower than a tile but at least one tall (a late layer at
        // small images: 512 × 12 × 4608) runs transposed inside `sgemm`: A (the weight) is
        // read once while packed as the B operand, rather than widened into a fresh copy for
        // the crate (a memory-bound pass over every late weight, twice per step).
        super::sgemm::sgemm((m, n, k), dst, lhs, ls, rhs, rs, accumulate, parallel);
        return;
    }
    // (In parallel when long. Should the host cache's allocation fail, a plain one aborts as
    // any `Vec` would.)
    let (a, b) = (A::widened(&lhs[..ea]), B::widened(&rhs[..eb]));
    gemm_strided((m, n, k), dst, &a, ls, &b, rs, accumulate, parallel);
    crate::alloc::recycle(a);
    crate::alloc::recycle(b);
}

/// The extents a half-precision product reads of its operands (see [`span`]), after checking
/// that `dst` holds `m × n` values and the operands (lengths, strides) hold their extents.
fn checked_extents(
    (m, n, k): (usize, usize, usize),
    dst: usize,
    (lhs, ls): (usize, (usize, usize)),
    (rhs, rs): (usize, (usize, usize)),
) -> (usize, usize) {
    let (ea, eb) = (span((m, k), ls), span((k, n), rs));
    assert!(dst >= m * n, "half-precision GEMM: dst too small");
    assert!(
        lhs >= ea && rhs >= eb,
        "half-precision GEMM: operand too small"
    );
    (ea, eb)
}

/// Whether f16 operands are read as f16 (widened while packed, as are autocast weights rounded
/// to f16) by the AVX-512 or AVX2 kernel: else half convolutions widen their operands first.
pub(crate) fn f16_packed() -> bool {
    f16::simd() || f16::avx2()
}

/// Whether bf16 convolution operands are read as bf16: on AMX or AVX512-BF16, or widened while
/// packed by the AVX2 kernel (autocast weights rounded to bf16 likewise) where the CPU has AVX2
/// but not AVX-512 (AVX-512 CPUs without a bf16 unit — Skylake-SP to Ice Lake — keep widening
/// first for the AVX-512 kernel: the mixed path is not measured there): else they are widened
/// first.
pub(crate) fn bf16_packed() -> bool {
    super::amx::engine().is_some() || (bf16::avx2() && !super::sgemm::available())
}

/// Whether f16 products run on AMX tiles (split into bf16 parts): where the CPU has AMX, unless
/// `HEMI_CPU_NO_F16_AMX` is set (then they take the AVX-512 kernel, which widens them while
/// packing; `scripts/compare-torch-cpu.sh` times both on AMX machines). Detected once.
fn f16_on_amx() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("HEMI_CPU_NO_F16_AMX").is_none() && super::amx::available())
}

fn batched<T: 'static + bytemuck::Pod + num_traits::Zero + num_traits::One + Send + Sync>(
    lhs: &[T],
    ll: &Layout,
    rhs: &[T],
    rl: &Layout,
    spec: &MatmulSpec,
) -> Result<Vec<T>> {
    let MatmulSpec { batch, m, n, k } = *spec;
    let mut out = crate::alloc::filled(batch * m * n, T::zero())?;
    if m == 0 || n == 0 || k == 0 {
        // Nothing to multiply (an empty K sums to zero): the operands may be empty buffers that
        // the batch offsets below would index past.
        return Ok(out);
    }
    let (ls, rs) = (ll.strides(), rl.strides());
    for (b, dst) in out.chunks_mut((m * n).max(1)).enumerate().take(batch) {
        let lo = ll.offset() + b * ls[0];
        let ro = rl.offset() + b * rs[0];
        gemm_strided(
            (m, n, k),
            dst,
            &lhs[lo..],
            (ls[1], ls[2]),
            &rhs[ro..],
            (rs[1], rs[2]),
            false,
            true,
        );
    }
    Ok(out)
}

/// Batched product in the compute type (f32, or f64 for F64), not yet rounded.
fn accumulate(
    lhs: &StorageRef,
    ll: &Layout,
    rhs: &StorageRef,
    rl: &Layout,
    spec: &MatmulSpec,
) -> Result<Compute> {
    let (a, b) = (host("matmul", lhs)?, host("matmul", rhs)?);
    if a.dtype() != b.dtype() {
        return Err(Error::dtype(
            "matmul",
            format!("lhs is {} but rhs is {}", a.dtype(), b.dtype()),
        ));
    }
    Ok(match (&*a, &*b) {
        (CpuStorage::F32(x), CpuStorage::F32(y)) => Compute::F32(batched(x, ll, y, rl, spec)?),
        (CpuStorage::F64(x), CpuStorage::F64(y)) => Compute::F64(batched(x, ll, y, rl, spec)?),
        (CpuStorage::I64(_), _) => return Err(Error::dtype("matmul", "int64 operands")),
        _ => {
            let (x, la) = widened_operand(&a, ll)?;
            let (y, lb) = widened_operand(&b, rl)?;
            let out = batched(&x, &la, &y, &lb, spec)?;
            crate::alloc::recycle(x);
            crate::alloc::recycle(y);
            Compute::F32(out)
        }
    })
}

/// A half-precision matmul operand widened to f32 (exact), with the layout that addresses it.
/// When the view's storage span is at most twice its elements (a dense view in any order: a
/// transposed weight, a broadcast batch), that span is widened in storage order, many lanes at
/// a time, and the view's strides are kept; otherwise (a sparse slice) the view is gathered
/// into a contiguous copy. (A transposed `[1000, 512]` f16 weight gathered element by element
/// against its stride cost ~2 % of a ResNet-18 fp16 autocast step on AVX2.)
fn widened_operand(s: &CpuStorage, l: &Layout) -> Result<(Vec<f32>, Layout)> {
    if l.elem_count() == 0 {
        // (An empty view's offset may lie past its storage: nothing to read.)
        return Ok((Vec::new(), Layout::contiguous(l.shape().clone())));
    }
    let span = l.span();
    let range = l.offset()..l.offset() + span;
    let dense = span <= l.elem_count().saturating_mul(2);
    let wide = match s {
        CpuStorage::F16(v) if dense => Some(super::convert::widened(&v[range])?),
        CpuStorage::BF16(v) if dense => Some(super::convert::widened(&v[range])?),
        _ => None,
    };
    if let Some(w) = wide {
        return Ok((w, Layout::new(l.shape().clone(), l.strides().to_vec(), 0)));
    }
    match super::compute::to_compute("matmul", s, l)? {
        Compute::F32(x) => Ok((x, Layout::contiguous(l.shape().clone()))),
        Compute::F64(_) => Err(Error::dtype("matmul", "unexpected compute type")),
    }
}

/// `alpha · acc + beta · c + bias[col]` over `[batch, m, n]` accumulators, in their type.
fn apply_epilogue<T: num_traits::Float>(
    acc: &mut [T],
    n: usize,
    ep: &GemmEpilogue,
    c: Option<&[f64]>,
    bias: Option<&[f64]>,
) {
    let t = |x: f64| T::from(x).unwrap_or_else(T::nan);
    let (alpha, beta) = (t(f64::from(ep.alpha)), t(f64::from(ep.beta)));
    for (i, v) in acc.iter_mut().enumerate() {
        let mut x = alpha * *v;
        if let Some(c) = c {
            x = x + beta * t(c[i]);
        }
        if let Some(b) = bias {
            x = x + t(b[i % n]);
        }
        *v = x;
    }
}

impl crate::backend::MatmulOps for super::CpuBackend {
    fn matmul(
        &self,
        lhs: &StorageRef,
        lhs_layout: &Layout,
        rhs: &StorageRef,
        rhs_layout: &Layout,
        spec: &MatmulSpec,
    ) -> Result<StorageRef> {
        check_matmul(lhs, lhs_layout, rhs, rhs_layout, spec)?;
        let dtype = lhs.dtype();
        Ok(wrap(
            accumulate(lhs, lhs_layout, rhs, rhs_layout, spec)?.into_storage(dtype)?,
        ))
    }

    /// The algorithm hint is ignored: the CPU has one.
    fn gemm(
        &self,
        lhs: &StorageRef,
        lhs_layout: &Layout,
        rhs: &StorageRef,
        rhs_layout: &Layout,
        spec: &MatmulSpec,
        ep: &GemmEpilogue,
    ) -> Result<StorageRef> {
        check_gemm(lhs, lhs_layout, rhs, rhs_layout, spec, ep)?;
        let c = match &ep.c {
            Some((c, cl)) => Some(to_f64_vec(&*host("gemm", c)?, cl)?),
            None => None,
        };
        let bias = match &ep.bias {
            Some(b) => Some(to_f64_vec(
                &*host("gemm", b)?,
                &Layout::contiguous([b.len()]),
            )?),
            None => None,
        };
        let (c, bias) = (c.as_deref().filter(|_| ep.beta != 0.0), bias.as_deref());
        let acc = accumulate(lhs, lhs_layout, rhs, rhs_layout, spec)?;
        let out = map_compute!(acc, |v: T| {
            let mut v = v;
            apply_epilogue(&mut v, spec.n, ep, c, bias);
            v
        });
        Ok(wrap(out.into_storage(ep.out_dtype)?))
    }
}

#[cfg(test)]
mod tests {
    use crate::{DType, Device, Generator, Result, Tensor};

    /// f16 and bf16 products of views at odd sizes — a transposed operand (widened over its
    /// span, strides kept), a broadcast batch (likewise), a column slice of a wider matrix
    /// (sparse: gathered) — against f64 within DESIGN.md's GEMM bound (f32 output), and bitwise
    /// against the f32 product of the same views of the operands cast to f32 first.
    #[test]
    fn half_products_of_views_match_f64_and_the_f32_product() -> Result<()> {
        let dev = Device::Cpu;
        let mut g = Generator::new(5);
        let (batch, m, k, n) = (3, 7, 37, 13);
        for dt in [DType::F16, DType::BF16] {
            // Each case: the rhs base's shape, the lhs and rhs views (made from bases of either
            // dtype), and whether the rhs is dense (widened over its span) or gathered.
            type View = fn(&Tensor, &Tensor) -> Result<(Tensor, Tensor)>;
            let cases: [(&str, Vec<usize>, View, bool); 4] = [
                (
                    "transposed rhs",
                    vec![batch, n, k],
                    |a, b| Ok((a.clone(), b.transpose(-1, -2)?)),
                    true,
                ),
                // (A linear layer's weight: 2-D, transposed, its batch broadcast.)
                (
                    "transposed 2-D rhs",
                    vec![n, k],
                    |a, b| Ok((a.clone(), b.t()?)),
                    true,
                ),
                // Rows 0..13 of the last batch, at an offset, broadcast over the batch.
                (
                    "broadcast batch",
                    vec![batch, 3 * n, k],
                    |a, b| {
                        let b = b.narrow(1, 0, 13)?.narrow(0, 2, 1)?.transpose(-1, -2)?;
                        let dims = [a.dims()[0], b.dims()[1], b.dims()[2]];
                        Ok((a.clone(), b.broadcast_as(dims)?))
                    },
                    true,
                ),
                // Columns 1..14 of 39: spans three times its elements.
                (
                    "column slice",
                    vec![batch, 3 * n, k],
                    |a, b| {
                        let b = b.transpose(-1, -2)?.contiguous()?;
                        Ok((a.clone(), b.narrow(-1, 1, 13)?))
                    },
                    false,
                ),
            ];
            for (name, b_dims, view, dense) in cases {
                let a0 = Tensor::uniform_with(&mut g, [batch, m, k], -1.0, 1.0, dt, dev)?;
                let b0 = Tensor::uniform_with(&mut g, b_dims, -1.0, 1.0, dt, dev)?;
                let (a, b) = view(&a0, &b0)?;
                if b.rank() == 3 {
                    let l = b.layout();
                    assert_eq!(l.span() <= 2 * l.elem_count(), dense, "{name}");
                }
                let got = a.matmul(&b)?;
                assert_eq!(got.dtype(), dt);
                let (af, bf) = view(&a0.to_dtype(DType::F32)?, &b0.to_dtype(DType::F32)?)?;
                let want_bits = af.matmul(&bf)?.to_dtype(dt)?;
                let (gv, wv) = (got.to_f64_vec()?, want_bits.to_f64_vec()?);
                for (i, (x, y)) in gv.iter().zip(&wv).enumerate() {
                    assert_eq!(x.to_bits(), y.to_bits(), "{dt} {name} at {i}");
                }
                let (av, bv) = (a.to_f64_vec()?, b.to_f64_vec()?);
                let u_out = if dt == DType::F16 {
                    2f64.powi(-11)
                } else {
                    2f64.powi(-8)
                };
                for z in 0..batch {
                    // (A 2-D rhs is every batch's.)
                    let zb = if b.rank() == 2 { 0 } else { z };
                    for i in 0..m {
                        for j in 0..n {
                            let (mut acc, mut abs) = (0.0, 0.0);
                            for p in 0..k {
                                let t = av[(z * m + i) * k + p] * bv[(zb * k + p) * n + j];
                                acc += t;
                                abs += t.abs();
                            }
                            let bound = k as f64 * 2f64.powi(-23) * abs + u_out * acc.abs();
                            let v = gv[(z * m + i) * n + j];
                            assert!((v - acc).abs() <= bound, "{dt} {name} ({z},{i},{j})");
                        }
                    }
                }
            }
        }
        // An empty view whose offset lies at the end of its storage: an empty product.
        let x = Tensor::uniform_with(&mut g, [2, 3], -1.0, 1.0, DType::F16, dev)?;
        let e = x.narrow(0, 2, 0)?.narrow(1, 3, 0)?.t()?;
        let y = Tensor::uniform_with(&mut g, [0, 4], -1.0, 1.0, DType::F16, dev)?;
        assert_eq!(e.matmul(&y)?.dims(), &[0, 4]);
        Ok(())
    }
}
