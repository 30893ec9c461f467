//! The thread-local cast-policy hook that autocast plugs into (DESIGN.md §3 step 2).
//!
//! Every op that autocast has a rule for first passes its tensor inputs to [`cast_inputs`]
//! under its name (`"matmul"`, `"conv2d"`, `"softmax"`, ...). With no policy installed (the
//! default) the inputs come back unchanged. `hemi-amp` installs its rule table while an
//! autocast region is active. Backward passes run with the policy suspended, so gradients keep
//! the dtypes of the forward pass.

use crate::{Result, Tensor};
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// Decides the dtypes of an op's inputs.
pub trait CastPolicy {
    /// Returns replacement inputs for `op` (same count and order), or `None` to keep them.
    fn cast_inputs(&self, op: &'static str, inputs: &[&Tensor]) -> Result<Option<Vec<Tensor>>>;
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
pub fn cast_inputs(op: &'static str, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
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
