//! The [`Communicator`] trait and the one-process world.

use crate::{Result, Tensor};
use std::time::Duration;

/// How values from every rank are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    /// Elementwise sum.
    Sum,
    /// Elementwise maximum (NaN handling is the library's).
    Max,
}

/// How long a collective waits for the other ranks before failing with
/// [`Error::Distributed`](crate::Error::Distributed) (PyTorch's process-group default is
/// 30 min; a training step of hemi's never waits that long for a healthy peer).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// A collective that was started and may still be running: [`Work::wait`] blocks until it
/// completed (then the tensor holds the result) or the communicator's timeout passed.
pub trait Work: Send {
    /// Waits for completion and writes the result into the tensor the collective was
    /// started on.
    fn wait(self: Box<Self>) -> Result<()>;
    /// Waits for completion and returns the result as a tensor of the started-on tensor's
    /// shape, dtype and device — that tensor itself, or, where the collective ran on a staging
    /// buffer (MPI's host buffers), the buffer as a new tensor without copying it back (the
    /// started-on tensor is then left as it was). For callers that only read the result.
    fn wait_output(self: Box<Self>) -> Result<Tensor>;
}

/// A collective that completed when it was started (on `tensor`).
#[derive(Debug)]
pub struct Completed(pub Tensor);

impl Work for Completed {
    fn wait(self: Box<Self>) -> Result<()> {
        Ok(())
    }
    fn wait_output(self: Box<Self>) -> Result<Tensor> {
        Ok(self.0)
    }
}

/// A group of processes (ranks `0..world_size`) that take part in collectives together.
///
/// Every rank must issue the same collectives, on tensors of the same shape and dtype, in the
/// same order — the order in which they are *started*: a collective started by
/// [`all_reduce_start`](Communicator::all_reduce_start) may complete later (waited for from
/// another thread), but starts must come from one ordered stream of calls, as the backward
/// pass's are. Tensors are reduced in place; they must be contiguous. A collective that has
/// not completed within the communicator's timeout (a rank died or is stuck) fails with
/// `Error::Distributed` naming the rank; the communicator is then unusable (later calls fail
/// at once), as a broken MPI or NCCL communicator is.
///
/// Numerics: f32/f64 values are combined in their own type. f16/bf16 tensors: MPI's path
/// widens them to f32, combines, and rounds once (for two ranks the correctly rounded sum);
/// NCCL reduces them natively. The order of a sum over more than two ranks is the library's.
pub trait Communicator: Send + Sync + std::fmt::Debug {
    /// This process's rank, `0..world_size()`.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn world_size(&self) -> usize;
    /// Replaces `tensor` on every rank with the elementwise reduction over all ranks.
    fn all_reduce(&self, tensor: &Tensor, op: ReduceOp) -> Result<()> {
        self.all_reduce_start(tensor, op)?.wait()
    }
    /// Starts [`all_reduce`](Communicator::all_reduce) of `tensor` and returns at once (the
    /// values to reduce are read now); the result is in `tensor` after [`Work::wait`].
    fn all_reduce_start(&self, tensor: &Tensor, op: ReduceOp) -> Result<Box<dyn Work>>;
    /// Replaces `tensor` on every rank with rank `root`'s values.
    fn broadcast(&self, tensor: &Tensor, root: usize) -> Result<()>;
    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<()>;
}

/// The world of one process: every collective is the identity. Lets the same training code
/// run with and without a launcher.
#[derive(Debug, Default, Clone, Copy)]
pub struct SingleProcess;

impl SingleProcess {
    /// The one-rank world.
    pub fn new() -> Self {
        SingleProcess
    }
}

impl Communicator for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_start(&self, tensor: &Tensor, _op: ReduceOp) -> Result<Box<dyn Work>> {
        super::host::check_contiguous("all_reduce", tensor)?;
        Ok(Box::new(Completed(tensor.clone())))
    }
    fn broadcast(&self, tensor: &Tensor, root: usize) -> Result<()> {
        super::host::check_root("broadcast", root, 1)?;
        super::host::check_contiguous("broadcast", tensor)
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
}
