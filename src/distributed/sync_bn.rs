//! Collectives inside the graph: a differentiable all-reduce, synchronized batch norm and the
//! GradScaler's `found_inf` combined across ranks.

use super::{Communicator, ReduceOp};
use crate::amp::FoundInfSync;
use crate::autograd::custom_op;
use crate::nn::{BatchStatsReducer, Module};
use crate::{no_grad, DType, Device, Result, Tensor};
use std::sync::Arc;

/// The sum of `t` over every rank as a new tensor, differentiable: its backward pass sums the
/// incoming gradient over every rank (each rank's input feeds every rank's output). Every
/// rank must call it, and run the backward pass, in the same order.
pub fn all_reduce_differentiable(comm: &Arc<dyn Communicator>, t: &Tensor) -> Result<Tensor> {
    let out = {
        let _g = no_grad();
        t.deep_copy()?
    };
    comm.all_reduce(&out, ReduceOp::Sum)?;
    let comm = Arc::clone(comm);
    Ok(custom_op(out, "all_reduce", &[t], move |g| {
        let g = g.deep_copy()?;
        comm.all_reduce(&g, ReduceOp::Sum)?;
        Ok(vec![Some(g)])
    }))
}

/// Batch statistics summed over a communicator's ranks.
#[derive(Debug)]
struct CommStats(Arc<dyn Communicator>);

impl BatchStatsReducer for CommStats {
    fn sum_across(&self, t: &Tensor) -> Result<Tensor> {
        all_reduce_differentiable(&self.0, t)
    }
    fn count_across(&self, n: f64, device: Device) -> Result<f64> {
        let t = Tensor::full([1], n, DType::F64, device)?;
        self.0.all_reduce(&t, ReduceOp::Sum)?;
        t.item()
    }
}

/// Makes every [`BatchNorm2d`](crate::nn::BatchNorm2d) in `module` synchronized over `comm`
/// (PyTorch's `SyncBatchNorm.convert_sync_batchnorm`): in training mode the mean and variance
/// are those of the batches of all ranks together, so 2 ranks with half a batch each compute
/// what one process computes on the whole batch. Returns the number of layers converted.
/// Costs three small all-reduces per layer forward (count, Σx, Σ(x−mean)²) and two backward.
///
/// ```
/// use hemi::distributed::{convert_sync_batchnorm, SingleProcess};
/// use hemi::nn::resnet18;
/// use std::sync::Arc;
/// let mut model = resnet18(10, hemi::Device::Cpu)?;
/// assert_eq!(convert_sync_batchnorm(&mut model, Arc::new(SingleProcess)), 20);
/// # Ok::<(), hemi::Error>(())
/// ```
pub fn convert_sync_batchnorm(module: &mut dyn Module, comm: Arc<dyn Communicator>) -> usize {
    let reducer: Arc<dyn BatchStatsReducer> = Arc::new(CommStats(comm));
    let mut n = 0;
    module.for_each_batch_norm(&mut |bn| {
        bn.set_stats_reducer(Some(Arc::clone(&reducer)));
        n += 1;
    });
    n
}

/// A GradScaler hook ([`GradScaler::set_found_inf_sync`](crate::amp::GradScaler::set_found_inf_sync))
/// that takes the maximum of every rank's `found_inf` flag, so that an overflow on one rank
/// makes every rank skip the step and back off the scale.
pub fn found_inf_sync(comm: Arc<dyn Communicator>) -> FoundInfSync {
    FoundInfSync(Arc::new(move |found: &Tensor| {
        comm.all_reduce(found, ReduceOp::Max)
    }))
}
