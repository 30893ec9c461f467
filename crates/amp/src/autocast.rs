//! Autocast: a thread-local region in which ops choose their compute dtype by one rule table
//! (PyTorch's CUDA autocast lists), with a cache of weight casts.
//!
//! | rule | ops ([`AutocastOp`]) | inputs become |
//! |---|---|---|
//! | lower precision | `conv2d`, `linear`, `matmul` (2-D and batched) | the region's dtype (F16 or BF16) |
//! | fp32 | `softmax`, `log_softmax`, `cross_entropy`, `mse_loss`, `sum`, `exp`, `log`, `pow` (`powf`), `rsqrt`, `reciprocal` (`recip`) | F32 |
//! | on no list | `mean`, `relu`, pooling, reshape and other views, `add`/`sub`/`mul`/`div`/`maximum`/`minimum`, `cat`, ... | unchanged; binary ops and `cat` promote mixed inputs to the widest dtype by themselves, as in PyTorch |
//! | batch norm | `batch_norm` | runs in its input's dtype with fp32 weight, bias and statistics |
//!
//! These are PyTorch's **CUDA** lists, used on every device. PyTorch's own CPU autocast uses
//! different lists (there `softmax`, `log_softmax`, `sum` and `exp` stay in lower precision);
//! hemi deliberately applies the CUDA lists on the CPU as well, so a model computes the same
//! dtypes wherever it runs. [`rule_for`] is an exhaustive match over [`AutocastOp`], the only
//! names under which ops consult autocast.
//!
//! Only F32 (and lower-precision) floating inputs are cast; F64 and integer tensors never are,
//! as in PyTorch. Gradients flow back through each cast, so fp32 parameters get fp32 gradients.
//!
//! **Weight-cast cache.** While the outermost region is active, the lower-precision cast of an
//! F32 leaf that requires grad is made once and reused (one copy of each weight per forward).
//! The cache is dropped when the outermost region exits. Casts made under `no_grad` are not
//! cached — unlike PyTorch (issue #112583), where a cast cached under `no_grad` is later reused
//! without its autograd edge.
//!
//! **Weights rounded in the op.** A convolution whose backend reads an F32 weight rounded as
//! its GEMM packs it (the CPU backend: `ConvOps::conv2d_rounds_f32_weight`) receives an F32
//! leaf weight that has no cached cast as it is ([`CastPolicy::rounds_in_op`]): the same
//! values, forward and backward, and the same F32 gradient as through a cast copy, but no copy
//! is made, so none is cached either. (Its input and bias are cast as usual.)
//!
//! ```
//! use hemi_amp::autocast;
//! use hemi_engine::{DType, Device, Tensor};
//! let x = Tensor::randn([4, 8], DType::F32, Device::Cpu)?;
//! let w = Tensor::randn([8, 2], DType::F32, Device::Cpu)?;
//! let _region = autocast(DType::F16)?;
//! let y = x.matmul(&w)?;
//! assert_eq!(y.dtype(), DType::F16);                  // lower precision
//! assert_eq!(y.softmax(1)?.dtype(), DType::F32);      // fp32 rule
//! # Ok::<(), hemi_engine::Error>(())
//! ```

pub use hemi_engine::cast_policy::AutocastOp;
use hemi_engine::cast_policy::{self, CastPolicy};
use hemi_engine::{is_grad_enabled, DType, Error, Result, Tensor, TensorId};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// How an op's inputs are cast inside an autocast region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CastRule {
    /// To the region's F16/BF16 (PyTorch's `lower_precision_fp` list).
    LowerPrecision,
    /// To F32 (PyTorch's `fp32` and `fp32_set_opt_dtype` lists).
    Fp32,
}

/// The rule table: the rule autocast applies to `op` (PyTorch's CUDA lists; ops that are on
/// no list never ask).
pub fn rule_for(op: AutocastOp) -> CastRule {
    match op {
        AutocastOp::Conv2d | AutocastOp::Linear | AutocastOp::Matmul => CastRule::LowerPrecision,
        AutocastOp::Softmax
        | AutocastOp::LogSoftmax
        | AutocastOp::CrossEntropy
        | AutocastOp::MseLoss
        | AutocastOp::Sum
        | AutocastOp::Exp
        | AutocastOp::Log
        | AutocastOp::Pow
        | AutocastOp::Rsqrt
        | AutocastOp::Reciprocal => CastRule::Fp32,
    }
}

#[derive(Debug, Clone, Copy)]
struct Region {
    enabled: bool,
    dtype: DType,
}

#[derive(Default)]
struct State {
    regions: Vec<Region>,
    cache: HashMap<(TensorId, DType), Tensor>,
    cache_hits: usize,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

/// The dtype autocast casts lower-precision ops to on this thread, if a region is active.
pub fn autocast_dtype() -> Option<DType> {
    STATE.with(|s| {
        s.borrow()
            .regions
            .last()
            .filter(|r| r.enabled)
            .map(|r| r.dtype)
    })
}

/// Number of weight-cast cache entries on this thread (for tests and diagnostics).
pub fn cache_len() -> usize {
    STATE.with(|s| s.borrow().cache.len())
}

/// Number of times a cached cast was reused since the outermost region began.
pub fn cache_hits() -> usize {
    STATE.with(|s| s.borrow().cache_hits)
}

/// An active autocast region; dropping it ends the region (and, for the outermost one, clears
/// the weight-cast cache and uninstalls the policy).
#[derive(Debug)]
pub struct AutocastGuard {
    _not_send: std::marker::PhantomData<*const ()>,
}

/// Enters an autocast region casting lower-precision ops to `dtype` (F16 or BF16).
pub fn autocast(dtype: DType) -> Result<AutocastGuard> {
    autocast_enabled(true, dtype)
}

/// Enters a region that is enabled or disabled; a disabled region inside an enabled one turns
/// autocast off until it exits (`torch.autocast(enabled=False)`).
pub fn autocast_enabled(enabled: bool, dtype: DType) -> Result<AutocastGuard> {
    if !dtype.is_half() {
        return Err(Error::DTypeMismatch {
            op: "autocast",
            msg: format!("autocast dtype must be float16 or bfloat16, got {dtype}"),
        });
    }
    let outermost = STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.regions.push(Region { enabled, dtype });
        s.regions.len() == 1
    });
    if outermost {
        cast_policy::install(Some(Rc::new(AutocastPolicy)));
    }
    Ok(AutocastGuard {
        _not_send: std::marker::PhantomData,
    })
}

impl Drop for AutocastGuard {
    fn drop(&mut self) {
        let outermost_done = STATE.with(|s| {
            let mut s = s.borrow_mut();
            s.regions.pop();
            if s.regions.is_empty() {
                s.cache.clear();
                s.cache_hits = 0;
                true
            } else {
                false
            }
        });
        if outermost_done {
            cast_policy::install(None);
        }
    }
}

/// Whether a cast of `t` to `dtype` may be cached: an F32 leaf requiring grad, with grad
/// mode on (never under `no_grad`).
fn cacheable(t: &Tensor, dtype: DType) -> bool {
    t.dtype() == DType::F32
        && dtype.is_half()
        && t.requires_grad()
        && t.is_leaf()
        && is_grad_enabled()
}

fn cast_one(t: &Tensor, dtype: DType) -> Result<Tensor> {
    if t.dtype() == dtype || !t.dtype().is_float() || t.dtype() == DType::F64 {
        return Ok(t.clone());
    }
    if !cacheable(t, dtype) {
        return t.to_dtype(dtype);
    }
    let key = (t.id(), dtype);
    let hit = STATE.with(|s| s.borrow().cache.get(&key).cloned());
    if let Some(c) = hit.filter(|c| !c.graph_freed()) {
        STATE.with(|s| s.borrow_mut().cache_hits += 1);
        return Ok(c);
    }
    let c = t.to_dtype(dtype)?;
    STATE.with(|s| s.borrow_mut().cache.insert(key, c.clone()));
    Ok(c)
}

struct AutocastPolicy;

impl CastPolicy for AutocastPolicy {
    fn cast_inputs(&self, op: AutocastOp, inputs: &[&Tensor]) -> Result<Option<Vec<Tensor>>> {
        let Some(region_dtype) = autocast_dtype() else {
            return Ok(None);
        };
        let target = match rule_for(op) {
            CastRule::LowerPrecision => region_dtype,
            CastRule::Fp32 => DType::F32,
        };
        inputs
            .iter()
            .map(|t| cast_one(t, target))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// An F32 parameter (a leaf) of a lower-precision op that has no cached cast yet: the op
    /// rounds it to the region's dtype as it reads it, so no copy is made (and none cached:
    /// another use rounds it again, or casts and caches it if that op cannot round).
    fn rounds_in_op(&self, op: AutocastOp, input: &Tensor) -> Option<DType> {
        let dtype = autocast_dtype()?;
        let cached = STATE.with(|s| s.borrow().cache.contains_key(&(input.id(), dtype)));
        (rule_for(op) == CastRule::LowerPrecision
            && input.dtype() == DType::F32
            && input.is_leaf()
            && !cached)
            .then_some(dtype)
    }
}
