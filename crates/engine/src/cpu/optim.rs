//! CPU optimizer family: fused multi-tensor Adam/AdamW and SGD, in place and multi-threaded
//! (one pass over each parameter's buffers, split in chunks across threads). The loss scale
//! and the overflow flag are read from their storages, as a GPU kernel reads them.

use super::amp::{read_scalar, write_scalar};
use super::compute::{buffer, PAR_THRESHOLD};
use super::convert::Vector;
use super::CpuBackend;
use crate::backend::{check_distinct, AdamTensors, FusedAdamSpec, OptimOps, SgdSpec, SgdTensors};
use crate::{CpuStorage, Error, Result, StorageRef};
use half::{bf16, f16};
use num_traits::Float;
use rayon::prelude::*;
use std::sync::RwLockWriteGuard;

/// Elements per parallel chunk: large enough to stream, small enough to spread.
const CHUNK: usize = PAR_THRESHOLD;

/// The scalars of one Adam step, in the compute type `T`.
#[derive(Clone, Copy)]
struct AdamConsts<T> {
    inv_scale: Option<T>,
    decay: T,
    l2: T,
    b1: T,
    one_minus_b1: T,
    b2: T,
    one_minus_b2: T,
    inv_sqrt_bc2: T,
    eps: T,
    step_size: T,
}

impl<T: Float> AdamConsts<T> {
    fn new(spec: &FusedAdamSpec, t: f64, grad_scale: Option<f64>) -> Self {
        let c = |x: f64| T::from(x).unwrap_or_else(T::nan);
        let (b1, b2) = (spec.beta1, spec.beta2);
        let (bc1, bc2) = (1.0 - b1.powf(t), 1.0 - b2.powf(t));
        let decoupled = spec.decoupled && spec.weight_decay != 0.0;
        AdamConsts {
            inv_scale: grad_scale.map(|gs| c(1.0) / c(gs)),
            decay: c(if decoupled {
                1.0 - spec.lr * spec.weight_decay
            } else {
                1.0
            }),
            l2: c(if spec.decoupled {
                0.0
            } else {
                spec.weight_decay
            }),
            b1: c(b1),
            one_minus_b1: c(1.0 - b1),
            b2: c(b2),
            one_minus_b2: c(1.0 - b2),
            inv_sqrt_bc2: c(1.0 / bc2.sqrt()),
            eps: c(spec.eps),
            step_size: c(spec.lr / bc1),
        }
    }
}

/// Conversions between a gradient element type and the compute type `T`.
trait GradElem<T>: Copy + Send + Sync {
    fn get(self) -> T;
    fn put(v: T) -> Self;
}

macro_rules! grad_elem {
    ($g:ty, $t:ty, $get:expr, $put:expr) => {
        impl GradElem<$t> for $g {
            #[inline(always)]
            fn get(self) -> $t {
                $get(self)
            }
            #[inline(always)]
            fn put(v: $t) -> Self {
                $put(v)
            }
        }
    };
}
grad_elem!(f32, f32, |x| x, |x| x);
grad_elem!(f16, f32, f16::to_f32, f16::from_f32);
grad_elem!(bf16, f32, bf16::to_f32, bf16::from_f32);
grad_elem!(f32, f64, f64::from, |x: f64| x as f32);
grad_elem!(f64, f64, |x| x, |x| x);
grad_elem!(f16, f64, f16::to_f64, f16::from_f64);
grad_elem!(bf16, f64, bf16::to_f64, bf16::from_f64);

/// The Adam update of one chunk, in the same order of operations as the unfused optimizer.
/// The const flags (unscale and write back the gradient, L2 decay, decoupled decay, AMSGrad)
/// are loop-invariant, so each combination compiles to its own branch-free loop that the
/// compiler vectorizes (sqrt and division included) — 16 lanes wide where the CPU has
/// AVX-512, 8 where it has AVX2 ([`adam_chunk_avx512`], [`adam_chunk_avx2`]).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn adam_chunk<
    T: Float,
    G: GradElem<T>,
    const SCALE: bool,
    const L2: bool,
    const DECAY: bool,
    const AMS: bool,
>(
    k: &AdamConsts<T>,
    p: &mut [T],
    g: &mut [G],
    m: &mut [T],
    v: &mut [T],
    vmax: &mut [T],
) {
    let n = p.len();
    let (g, m, v) = (&mut g[..n], &mut m[..n], &mut v[..n]);
    let vmax = if AMS { &mut vmax[..n] } else { vmax };
    let inv = k.inv_scale.unwrap_or_else(T::one);
    for i in 0..n {
        let gi = if SCALE { g[i].get() * inv } else { g[i].get() };
        if SCALE {
            g[i] = G::put(gi);
        }
        let gw = if L2 { gi + p[i] * k.l2 } else { gi };
        let p0 = if DECAY { p[i] * k.decay } else { p[i] };
        let mi = m[i] * k.b1 + gw * k.one_minus_b1;
        let vi = v[i] * k.b2 + gw * gw * k.one_minus_b2;
        let vhat = if AMS {
            let x = vmax[i].max(vi);
            vmax[i] = x;
            x
        } else {
            vi
        };
        let denom = vhat.sqrt() * k.inv_sqrt_bc2 + k.eps;
        p[i] = p0 - mi / denom * k.step_size;
        m[i] = mi;
        v[i] = vi;
    }
}

/// [`adam_chunk`] compiled for a wider vector unit (`$feature`): the same operations in the
/// same order (IEEE sqrt and division, no contraction into FMAs), so the same bits, 16 (AVX-512)
/// or 8 (AVX2) f32 lanes per instruction instead of baseline x86-64's 4 (at 4 lanes the square
/// roots and divisions made Adam compute-bound: 17 % of a ResNet-18 step at 32 px on Sapphire
/// Rapids, 20 % on AMD Zen 3).
macro_rules! adam_chunk_wide {
    ($name:ident, $feature:literal, $tier:expr) => {
        #[cfg(target_arch = "x86_64")]
        fn $name<
            T: Float,
            G: GradElem<T>,
            const SCALE: bool,
            const L2: bool,
            const DECAY: bool,
            const AMS: bool,
        >(
            k: &AdamConsts<T>,
            p: &mut [T],
            g: &mut [G],
            m: &mut [T],
            v: &mut [T],
            vmax: &mut [T],
        ) {
            #[target_feature(enable = $feature)]
            fn run<
                T: Float,
                G: GradElem<T>,
                const SCALE: bool,
                const L2: bool,
                const DECAY: bool,
                const AMS: bool,
            >(
                k: &AdamConsts<T>,
                p: &mut [T],
                g: &mut [G],
                m: &mut [T],
                v: &mut [T],
                vmax: &mut [T],
            ) {
                adam_chunk::<T, G, SCALE, L2, DECAY, AMS>(k, p, g, m, v, vmax)
            }
            debug_assert!(super::convert::vector() >= $tier);
            // SAFETY: `adam_chunk_fn` returns this only for a `Vector` of at least `$tier`,
            // which its callers ask for only where the CPU has it (`convert::vector()`).
            unsafe { run::<T, G, SCALE, L2, DECAY, AMS>(k, p, g, m, v, vmax) }
        }
    };
}
adam_chunk_wide!(adam_chunk_avx512, "avx512f", Vector::Avx512);
adam_chunk_wide!(adam_chunk_avx2, "avx2", Vector::Avx2);

/// The instantiation of [`adam_chunk`] for the flags of `k`.
type AdamChunkFn<T, G> = fn(&AdamConsts<T>, &mut [T], &mut [G], &mut [T], &mut [T], &mut [T]);

/// (`width`: the vector unit to compile for, which the caller may ask for only where the CPU
/// has it, `width <= convert::vector()`; ignored off x86-64.)
fn adam_chunk_fn<T: Float, G: GradElem<T>>(
    k: &AdamConsts<T>,
    ams: bool,
    width: Vector,
) -> AdamChunkFn<T, G> {
    let flags = (
        k.inv_scale.is_some(),
        k.l2 != T::zero(),
        k.decay != T::one(),
        ams,
    );
    macro_rules! pick {
        ($($s:literal $l:literal $d:literal $a:literal),*) => {
            match (flags, width) {
                $(#[cfg(target_arch = "x86_64")]
                (($s, $l, $d, $a), Vector::Avx512) => adam_chunk_avx512::<T, G, $s, $l, $d, $a>,)*
                $(#[cfg(target_arch = "x86_64")]
                (($s, $l, $d, $a), Vector::Avx2) => adam_chunk_avx2::<T, G, $s, $l, $d, $a>,)*
                $((($s, $l, $d, $a), _) => adam_chunk::<T, G, $s, $l, $d, $a>,)*
            }
        };
    }
    pick!(
        false false false false, false false false true, false false true false, false false true true,
        false true false false, false true false true, false true true false, false true true true,
        true false false false, true false false true, true false true false, true false true true,
        true true false false, true true false true, true true true false, true true true true
    )
}

/// One parameter's Adam step over its slices, chunked across threads.
fn adam_slices<T: Float + Send + Sync, G: GradElem<T>>(
    k: AdamConsts<T>,
    p: &mut [T],
    g: &mut [G],
    m: &mut [T],
    v: &mut [T],
    vmax: Option<&mut [T]>,
) {
    let f = adam_chunk_fn::<T, G>(&k, vmax.is_some(), super::convert::vector());
    let chunks = p
        .par_chunks_mut(CHUNK)
        .zip(g.par_chunks_mut(CHUNK))
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK));
    match vmax {
        Some(vm) => chunks
            .zip(vm.par_chunks_mut(CHUNK))
            .for_each(|((((p, g), m), v), vm)| f(&k, p, g, m, v, vm)),
        None => chunks.for_each(|(((p, g), m), v)| f(&k, p, g, m, v, &mut [])),
    }
}

/// Write access to `s`, which must have `n` elements.
fn locked<'a>(
    op: &'static str,
    what: &str,
    s: &'a StorageRef,
    n: usize,
) -> Result<RwLockWriteGuard<'a, CpuStorage>> {
    if s.len() != n {
        return Err(Error::shape(
            op,
            format!("{what} has {} elements, the parameter {n}", s.len()),
        ));
    }
    Ok(buffer(op, s)?.write())
}

fn mismatch(op: &'static str) -> Error {
    Error::dtype(
        op,
        "parameters and optimizer state must be float32 or float64 of one dtype, gradients float",
    )
}

fn adam_one(t: &AdamTensors, spec: &FusedAdamSpec, grad_scale: Option<f64>) -> Result<()> {
    const OP: &str = "adam_step";
    let n = t.param.len();
    let mut all = vec![&t.param, &t.grad, &t.exp_avg, &t.exp_avg_sq, &t.step];
    all.extend(t.max_exp_avg_sq.as_ref());
    check_distinct(OP, &all)?;
    let step = read_scalar(OP, &t.step)? + 1.0;
    let mut p = locked(OP, "param", &t.param, n)?;
    let mut g = locked(OP, "grad", &t.grad, n)?;
    let mut m = locked(OP, "exp_avg", &t.exp_avg, n)?;
    let mut v = locked(OP, "exp_avg_sq", &t.exp_avg_sq, n)?;
    let mut vmax = match &t.max_exp_avg_sq {
        Some(s) => Some(locked(OP, "max_exp_avg_sq", s, n)?),
        None => None,
    };
    match (&mut *p, &mut *m, &mut *v) {
        (CpuStorage::F32(p), CpuStorage::F32(m), CpuStorage::F32(v)) => {
            let k = AdamConsts::<f32>::new(spec, step, grad_scale);
            let vm = match vmax.as_deref_mut() {
                Some(CpuStorage::F32(x)) => Some(x.as_mut_slice()),
                Some(_) => return Err(mismatch(OP)),
                None => None,
            };
            match &mut *g {
                CpuStorage::F32(g) => adam_slices(k, p, g, m, v, vm),
                CpuStorage::F16(g) => adam_slices(k, p, g, m, v, vm),
                CpuStorage::BF16(g) => adam_slices(k, p, g, m, v, vm),
                _ => return Err(mismatch(OP)),
            }
        }
        (CpuStorage::F64(p), CpuStorage::F64(m), CpuStorage::F64(v)) => {
            let k = AdamConsts::<f64>::new(spec, step, grad_scale);
            let vm = match vmax.as_deref_mut() {
                Some(CpuStorage::F64(x)) => Some(x.as_mut_slice()),
                Some(_) => return Err(mismatch(OP)),
                None => None,
            };
            match &mut *g {
                CpuStorage::F64(g) => adam_slices(k, p, g, m, v, vm),
                CpuStorage::F32(g) => adam_slices(k, p, g, m, v, vm),
                CpuStorage::F16(g) => adam_slices(k, p, g, m, v, vm),
                CpuStorage::BF16(g) => adam_slices(k, p, g, m, v, vm),
                CpuStorage::I64(_) => return Err(mismatch(OP)),
            }
        }
        _ => return Err(mismatch(OP)),
    }
    drop((p, g, m, v, vmax));
    write_scalar(OP, &t.step, step)
}

/// One parameter's SGD step through the compute type `T`.
fn sgd_slices<T: Float + Send + Sync, G: GradElem<T>>(
    spec: &SgdSpec,
    p: &mut [T],
    g: &[G],
    buf: Option<&mut [T]>,
) {
    let c = |x: f64| T::from(x).unwrap_or_else(T::nan);
    let (lr, wd, mom, damp) = (
        c(spec.lr),
        c(spec.weight_decay),
        c(spec.momentum),
        c(1.0 - spec.dampening),
    );
    let (first, nesterov) = (spec.first_step, spec.nesterov);
    let decayed = move |p: T, g: G| {
        let g = g.get();
        if wd == T::zero() {
            g
        } else {
            g + p * wd
        }
    };
    match buf {
        None => p
            .par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .for_each(|(p, g)| {
                for (p, &g) in p.iter_mut().zip(g) {
                    *p = *p - decayed(*p, g) * lr;
                }
            }),
        Some(b) => p
            .par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(b.par_chunks_mut(CHUNK))
            .for_each(|((p, g), b)| {
                for ((p, &g), b) in p.iter_mut().zip(g).zip(b.iter_mut()) {
                    let d = decayed(*p, g);
                    *b = if first { d } else { *b * mom + d * damp };
                    let step = if nesterov { d + *b * mom } else { *b };
                    *p = *p - step * lr;
                }
            }),
    }
}

fn sgd_one(t: &SgdTensors, spec: &SgdSpec) -> Result<()> {
    const OP: &str = "sgd_step";
    let n = t.param.len();
    let mut all = vec![&t.param, &t.grad];
    all.extend(t.momentum_buffer.as_ref());
    check_distinct(OP, &all)?;
    let mut p = locked(OP, "param", &t.param, n)?;
    let g = locked(OP, "grad", &t.grad, n)?;
    let mut b = match &t.momentum_buffer {
        Some(s) => Some(locked(OP, "momentum_buffer", s, n)?),
        None => None,
    };
    macro_rules! run {
        ($pv:ident, $T:ty, $p:expr) => {{
            let b = match b.as_deref_mut() {
                Some(CpuStorage::$pv(x)) => Some(x.as_mut_slice()),
                Some(_) => return Err(mismatch(OP)),
                None => None,
            };
            match &*g {
                CpuStorage::F32(g) => sgd_slices::<$T, f32>(spec, $p, g, b),
                CpuStorage::F16(g) => sgd_slices::<$T, f16>(spec, $p, g, b),
                CpuStorage::BF16(g) => sgd_slices::<$T, bf16>(spec, $p, g, b),
                _ => return Err(mismatch(OP)),
            }
        }};
    }
    match &mut *p {
        CpuStorage::F32(p) => run!(F32, f32, p),
        CpuStorage::F64(p) => {
            let b = match b.as_deref_mut() {
                Some(CpuStorage::F64(x)) => Some(x.as_mut_slice()),
                Some(_) => return Err(mismatch(OP)),
                None => None,
            };
            match &*g {
                CpuStorage::F64(g) => sgd_slices::<f64, f64>(spec, p, g, b),
                CpuStorage::F32(g) => sgd_slices::<f64, f32>(spec, p, g, b),
                CpuStorage::F16(g) => sgd_slices::<f64, f16>(spec, p, g, b),
                CpuStorage::BF16(g) => sgd_slices::<f64, bf16>(spec, p, g, b),
                CpuStorage::I64(_) => return Err(mismatch(OP)),
            }
        }
        _ => return Err(mismatch(OP)),
    }
    Ok(())
}

/// Whether an optional `found_inf` flag is set.
fn overflowed(op: &'static str, found_inf: Option<&StorageRef>) -> Result<bool> {
    Ok(match found_inf {
        Some(f) => read_scalar(op, f)? != 0.0,
        None => false,
    })
}

impl OptimOps for CpuBackend {
    fn adam_step(
        &self,
        tensors: &[AdamTensors],
        spec: &FusedAdamSpec,
        grad_scale: Option<&StorageRef>,
        found_inf: Option<&StorageRef>,
    ) -> Result<()> {
        if overflowed("adam_step", found_inf)? {
            return Ok(());
        }
        let gs = grad_scale
            .map(|s| read_scalar("adam_step", s))
            .transpose()?;
        // A scale whose inverse is not finite (it underflowed to 0) counts as an overflow:
        // nothing changes, as in the kernels' check (computed in f32, as they read it).
        if gs.is_some_and(|g| !(1.0 / g as f32).is_finite()) {
            return Ok(());
        }
        // (One hand-over into the pool for all parameters, not one per parameter.)
        super::in_pool(|| tensors.iter().try_for_each(|t| adam_one(t, spec, gs)))
    }

    fn sgd_step(
        &self,
        tensors: &[SgdTensors],
        spec: &SgdSpec,
        found_inf: Option<&StorageRef>,
    ) -> Result<()> {
        if overflowed("sgd_step", found_inf)? {
            return Ok(());
        }
        super::in_pool(|| tensors.iter().try_for_each(|t| sgd_one(t, spec)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX2 and AVX-512 instantiations of every flag combination give the same bits as
    /// the baseline one (same operations in the same order), over an odd length with a tail,
    /// for f32 and f16 gradients.
    #[test]
    fn wide_adam_equals_the_baseline_bitwise() {
        let widths: Vec<Vector> = [Vector::Base, Vector::Avx2, Vector::Avx512]
            .into_iter()
            .filter(|&w| w <= super::super::convert::vector())
            .collect();
        if widths.len() < 2 {
            println!(
                "skipped: this CPU has neither AVX2 nor AVX-512 (only the baseline loop runs)"
            );
            return;
        }
        let mut draw = super::super::gemm_check::uniform(0x2545_F491_4F6C_DD1D);
        let n = 1000 + 37;
        let mut vals = |scale: f32| (0..n).map(|_| draw() * scale).collect::<Vec<f32>>();
        let (p, g, m, v) = (vals(2.0), vals(1e3), vals(0.1), vals(0.01));
        let v: Vec<f32> = v.iter().map(|x| x.abs()).collect();
        let vmax: Vec<f32> = v.iter().map(|x| x * 1.5).collect();
        for flags in 0..16u32 {
            let bit = |b: u32| flags & (1 << b) != 0;
            let spec = FusedAdamSpec {
                lr: 1e-3,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: if bit(1) || bit(2) { 0.01 } else { 0.0 },
                decoupled: bit(2),
                amsgrad: bit(3),
            };
            let k = AdamConsts::<f32>::new(&spec, 3.0, bit(0).then_some(1024.0));
            let ams = bit(3);
            let mut runs = Vec::new();
            for &width in &widths {
                let f = adam_chunk_fn::<f32, f32>(&k, ams, width);
                let f16_fn = adam_chunk_fn::<f32, f16>(&k, ams, width);
                let (mut p, mut g, mut m, mut v, mut vm) =
                    (p.clone(), g.clone(), m.clone(), v.clone(), vmax.clone());
                let mut gh: Vec<f16> = g.iter().map(|&x| f16::from_f32(x)).collect();
                let mut ph = p.clone();
                let (mut mh, mut vh, mut vmh) = (m.clone(), v.clone(), vm.clone());
                f(&k, &mut p, &mut g, &mut m, &mut v, &mut vm);
                f16_fn(&k, &mut ph, &mut gh, &mut mh, &mut vh, &mut vmh);
                let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                let hbits = gh.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                runs.push((
                    [bits(&p), bits(&g), bits(&m), bits(&v), bits(&vm)],
                    [bits(&ph), bits(&mh), bits(&vh), bits(&vmh)],
                    hbits,
                ));
            }
            for (run, width) in runs.iter().zip(&widths).skip(1) {
                assert!(*run == runs[0], "flags {flags:04b}: {width:?} Adam differs");
            }
            let before: Vec<u32> = p.iter().map(|v| v.to_bits()).collect();
            assert_ne!(runs[0].0[0], before, "flags {flags:04b}: nothing updated");
        }
    }
}
