//! The thread-local cast-policy hook that autocast plugs into (DESIGN.md §3 step 2).
//!
//! Every op on one of PyTorch's CUDA autocast lists first passes its tensor inputs to
//! [`cast_inputs`] as an [`AutocastOp`]. Ops on no list (`mean`, `relu`, pooling, views, the
//! binary arithmetic ops and `cat`, which promote to their widest input by themselves) never
//! consult the policy. With no policy installed (the default) the inputs come back unchanged. `hemi-amp` installs its rule table while an
//! autocast region is active. Backward passes run with the policy suspended, so gradients keep
//! the dtypes of the forward pass.

use crate::{DType, Result, Tensor};
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// The ops of hemi that appear on PyTorch's CUDA autocast lists: the one vocabulary shared by
/// the ops (which announce themselves) and `hemi-amp`'s rule table (an exhaustive match, so an
/// op cannot silently fall through to "unchanged").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AutocastOp {
    /// `Tensor::conv2d` (PyTorch `conv2d`).
    Conv2d,
    /// `Tensor::linear` (`linear`).
    Linear,
    /// `Tensor::matmul`, 2-D and batched (`matmul`, `mm`, `bmm`).
    Matmul,
    /// `Tensor::softmax` (`softmax`).
    Softmax,
    /// `Tensor::log_softmax` (`log_softmax`).
    LogSoftmax,
    /// `Tensor::cross_entropy` (`cross_entropy` = `log_softmax` + `nll_loss`).
    CrossEntropy,
    /// `Tensor::mse_loss` (`mse_loss`).
    MseLoss,
    /// `Tensor::sum*` (`sum`).
    Sum,
    /// `Tensor::exp` (`exp`).
    Exp,
    /// `Tensor::log` (`log`).
    Log,
    /// `Tensor::powf` (`pow`).
    Pow,
    /// `Tensor::rsqrt` (`rsqrt`).
    Rsqrt,
    /// `Tensor::recip` (`reciprocal`).
    Reciprocal,
}

impl AutocastOp {
    /// Every variant, in declaration order.
    pub const ALL: [AutocastOp; 13] = [
        AutocastOp::Conv2d,
        AutocastOp::Linear,
        AutocastOp::Matmul,
        AutocastOp::Softmax,
        AutocastOp::LogSoftmax,
        AutocastOp::CrossEntropy,
        AutocastOp::MseLoss,
        AutocastOp::Sum,
        AutocastOp::Exp,
        AutocastOp::Log,
        AutocastOp::Pow,
        AutocastOp::Rsqrt,
        AutocastOp::Reciprocal,
    ];

    /// The op's name in PyTorch's autocast lists.
    pub fn pytorch_name(self) -> &'static str {
        match self {
            AutocastOp::Conv2d => "conv2d",
            AutocastOp::Linear => "linear",
            AutocastOp::Matmul => "matmul",
            AutocastOp::Softmax => "softmax",
            AutocastOp::LogSoftmax => "log_softmax",
            AutocastOp::CrossEntropy => "cross_entropy",
            AutocastOp::MseLoss => "mse_loss",
            AutocastOp::Sum => "sum",
            AutocastOp::Exp => "exp",
            AutocastOp::Log => "log",
            AutocastOp::Pow => "pow",
            AutocastOp::Rsqrt => "rsqrt",
            AutocastOp::Reciprocal => "reciprocal",
        }
    }
}

/// Decides the dtypes of an op's inputs.
pub trait CastPolicy {
    /// Returns replacement inputs for `op` (same count and order), or `None` to keep them.
    fn cast_inputs(&self, op: AutocastOp, inputs: &[&Tensor]) -> Result<Option<Vec<Tensor>>>;
    /// For an op that can read an F32 parameter rounded to a half dtype itself (a
    /// convolution's weight, rounded as its GEMM packs it): the dtype [`CastPolicy::cast_inputs`]
    /// would cast `input` to, when the op may round it instead of receiving a cast copy — the
    /// same values without the copy. `None` (the default): the op takes the cast inputs.
    fn rounds_in_op(&self, op: AutocastOp, input: &Tensor) -> Option<DType> {
        let _ = (op, input);
        None
    }
}

thread_local! {
    static POLICY: RefCell<Option<Rc<dyn CastPolicy>>> = const { RefCell::new(None) };
    static SUSPENDED: Cell<u32> = const { Cell::new(0) };
}

/// Installs `policy` for the current thread (or removes it with `None`); returns the previous.
pub fn install(policy: Option<Rc<dyn CastPolicy>>) -> Option<Rc<dyn CastPolicy>> {
    POLICY.with(|p| p.replace(policy))
}

/// The inputs of `op` after the thread's policy has cast them.
pub fn cast_inputs(op: AutocastOp, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
    let policy = if SUSPENDED.with(Cell::get) > 0 {
        None
    } else {
        POLICY.with(|p| p.borrow().clone())
    };
    if let Some(policy) = policy {
        if let Some(cast) = policy.cast_inputs(op, inputs)? {
            return Ok(cast);
        }
    }
    Ok(inputs.iter().map(|&t| t.clone()).collect())
}

/// [`CastPolicy::rounds_in_op`] of the thread's policy (`None` without one, or suspended).
pub fn rounds_in_op(op: AutocastOp, input: &Tensor) -> Option<DType> {
    if SUSPENDED.with(Cell::get) > 0 {
        return None;
    }
    let policy = POLICY.with(|p| p.borrow().clone())?;
    policy.rounds_in_op(op, input)
}

/// Suspends the policy (ops see their inputs unchanged) until the guard drops.
#[derive(Debug)]
pub struct SuspendGuard(());

impl Drop for SuspendGuard {
    fn drop(&mut self) {
        SUSPENDED.with(|s| s.set(s.get() - 1));
    }
}

/// Suspends the policy on this thread until the returned guard drops (nests).
pub fn suspend() -> SuspendGuard {
    SUSPENDED.with(|s| s.set(s.get() + 1));
    SuspendGuard(())
}
