//! CPU fused Adam/AdamW: one pass per parameter reading the loss scale and the overflow flag
//! from their storages (on a GPU these stay on the device; see `Backend::fused_adam`).

use super::amp::read_scalar;
use super::compute::{all_to_compute, host, scalar, Compute};
use super::wrap;
use crate::backend::{AdamTensors, FusedAdamSpec};
use crate::{CpuStorage, Error, Result, StorageRef};
use num_traits::Float;

fn wide(op: &'static str, s: &StorageRef) -> Result<Compute> {
    all_to_compute(op, host(op, s)?)
}

struct Moments<T> {
    p: Vec<T>,
    m: Vec<T>,
    v: Vec<T>,
    vmax: Option<Vec<T>>,
}

/// The Adam update in the compute type `T`, in the same order of operations as the unfused
/// optimizer.
fn adam_update<T: Float>(
    mut s: Moments<T>,
    g: &[T],
    spec: &FusedAdamSpec,
    t: f64,
    grad_scale: Option<f64>,
) -> (Moments<T>, Vec<T>) {
    let c = |x: f64| scalar::<T>(x);
    let (b1, b2) = (spec.beta1, spec.beta2);
    let bc1 = 1.0 - b1.powf(t);
    let bc2 = 1.0 - b2.powf(t);
    let inv_scale = grad_scale.map(|gs| c(1.0) / c(gs));
    let mut unscaled = Vec::with_capacity(g.len());
    for i in 0..g.len() {
        let gi = inv_scale.map_or(g[i], |k| g[i] * k);
        unscaled.push(gi);
        let mut p = s.p[i];
        let mut gw = gi;
        if spec.weight_decay != 0.0 {
            if spec.decoupled {
                p = p * c(1.0 - spec.lr * spec.weight_decay);
            } else {
                gw = gw + s.p[i] * c(spec.weight_decay);
            }
        }
        let m = s.m[i] * c(b1) + gw * c(1.0 - b1);
        let v = s.v[i] * c(b2) + gw * gw * c(1.0 - b2);
        let vhat = match s.vmax.as_mut() {
            Some(vm) => {
                vm[i] = vm[i].max(v);
                vm[i]
            }
            None => v,
        };
        let denom = vhat.sqrt() * c(1.0 / bc2.sqrt()) + c(spec.eps);
        s.p[i] = p - m / denom * c(spec.lr / bc1);
        s.m[i] = m;
        s.v[i] = v;
    }
    (s, unscaled)
}

fn vec_of<T>(
    c: Compute,
    f: impl Fn(Compute) -> Option<Vec<T>>,
    op: &'static str,
) -> Result<Vec<T>> {
    f(c).ok_or_else(|| Error::dtype(op, "parameter and state dtypes differ"))
}

fn step_one(t: &AdamTensors, spec: &FusedAdamSpec, grad_scale: Option<f64>) -> Result<AdamTensors> {
    const OP: &str = "fused_adam";
    let pdt = t.param.dtype();
    let n = t.param.len();
    for (what, s) in [
        ("grad", &t.grad),
        ("exp_avg", &t.exp_avg),
        ("exp_avg_sq", &t.exp_avg_sq),
    ] {
        if s.len() != n {
            return Err(Error::shape(
                OP,
                format!("{what} has {} elements, the parameter {n}", s.len()),
            ));
        }
    }
    let step = read_scalar(OP, &t.step)? + 1.0;
    let gdt = t.grad.dtype();
    macro_rules! run {
        ($variant:ident) => {{
            let get = |c: Compute| match c {
                Compute::$variant(v) => Some(v),
                _ => None,
            };
            let g = match wide(OP, &t.grad)? {
                Compute::F32(v) => v.into_iter().map(|x| x as _).collect(),
                Compute::F64(v) => v.into_iter().map(|x| x as _).collect(),
            };
            let s = Moments {
                p: vec_of(wide(OP, &t.param)?, get, OP)?,
                m: vec_of(wide(OP, &t.exp_avg)?, get, OP)?,
                v: vec_of(wide(OP, &t.exp_avg_sq)?, get, OP)?,
                vmax: match &t.max_exp_avg_sq {
                    Some(x) => Some(vec_of(wide(OP, x)?, get, OP)?),
                    None => None,
                },
            };
            let g: Vec<_> = g;
            let (s, unscaled) = adam_update(s, &g, spec, step, grad_scale);
            AdamTensors {
                param: wrap(Compute::$variant(s.p).into_storage(pdt)),
                grad: wrap(Compute::$variant(unscaled).into_storage(gdt)),
                exp_avg: wrap(Compute::$variant(s.m).into_storage(pdt)),
                exp_avg_sq: wrap(Compute::$variant(s.v).into_storage(pdt)),
                max_exp_avg_sq: s.vmax.map(|v| wrap(Compute::$variant(v).into_storage(pdt))),
                step: wrap(CpuStorage::F32(vec![step as f32])),
            }
        }};
    }
    Ok(match wide(OP, &t.param)? {
        Compute::F32(_) => run!(F32),
        Compute::F64(_) => run!(F64),
    })
}

/// See [`crate::Backend::fused_adam`].
pub(crate) fn fused_adam(
    tensors: &[AdamTensors],
    spec: &FusedAdamSpec,
    grad_scale: Option<&StorageRef>,
    found_inf: Option<&StorageRef>,
) -> Result<Vec<AdamTensors>> {
    if let Some(f) = found_inf {
        if read_scalar("fused_adam", f)? != 0.0 {
            return Ok(tensors.to_vec());
        }
    }
    let gs = grad_scale
        .map(|s| read_scalar("fused_adam", s))
        .transpose()?;
    tensors.iter().map(|t| step_one(t, spec, gs)).collect()
}
