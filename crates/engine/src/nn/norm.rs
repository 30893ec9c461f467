//! Batch normalization layer.

use super::{init, join, Module, Visitor};
use crate::{no_grad, BatchNormParams, DType, Device, Error, Result, Tensor};
use std::sync::Arc;

/// Combines batch statistics across processes for synchronized batch norm (PyTorch's
/// `SyncBatchNorm`); `hemi::distributed` implements it over a communicator.
pub trait BatchStatsReducer: Send + Sync + std::fmt::Debug {
    /// The sum of `t` over every rank, differentiable: the backward pass sums the gradient
    /// over every rank too (each rank's statistics feed every rank's output).
    fn sum_across(&self, t: &Tensor) -> Result<Tensor>;
    /// The sum of `n` over every rank (element counts; not differentiated), exchanged as a
    /// tensor on `device` (the batch's; NCCL reduces only device memory).
    fn count_across(&self, n: f64, device: Device) -> Result<f64>;
}

/// Batch norm over `[N, C, H, W]` with affine `weight`/`bias [C]` (init 1 and 0) and buffers
/// `running_mean` (0), `running_var` (1) and `num_batches_tracked` (I64 scalar), as PyTorch.
#[derive(Debug)]
pub struct BatchNorm2d {
    /// Scale `[C]`.
    pub weight: Tensor,
    /// Shift `[C]`.
    pub bias: Tensor,
    /// Running mean `[C]` (buffer).
    pub running_mean: Tensor,
    /// Running (unbiased) variance `[C]` (buffer).
    pub running_var: Tensor,
    /// Number of training batches seen (buffer, I64 `[]`).
    pub num_batches_tracked: Tensor,
    /// Running-average weight of the newest batch (0.1).
    pub momentum: f64,
    /// Variance epsilon (1e-5).
    pub eps: f64,
    training: bool,
    /// Set for synchronized batch norm: training-mode statistics over every rank's batch.
    stats_reducer: Option<Arc<dyn BatchStatsReducer>>,
}

impl BatchNorm2d {
    /// A new layer with `num_features` channels, PyTorch defaults.
    pub fn new(num_features: usize, device: Device) -> Result<Self> {
        if num_features == 0 {
            return Err(Error::invalid(
                "BatchNorm2d",
                "num_features must be positive",
            ));
        }
        Ok(BatchNorm2d {
            weight: init::constant([num_features], 1.0, device)?,
            bias: init::constant([num_features], 0.0, device)?,
            running_mean: Tensor::zeros([num_features], DType::F32, device)?,
            running_var: Tensor::ones([num_features], DType::F32, device)?,
            num_batches_tracked: Tensor::zeros((), DType::I64, device)?,
            momentum: 0.1,
            eps: 1e-5,
            training: true,
            stats_reducer: None,
        })
    }
}

impl BatchNorm2d {
    /// `relu(self.forward(x))` through the fused [`Tensor::batch_norm_relu`] (same values and
    /// gradients, one pass over the activation fewer each way); what ResNet's blocks call.
    pub fn forward_relu(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, true)
    }

    /// Makes training-mode statistics span every rank's batch through `reducer` (PyTorch's
    /// `SyncBatchNorm`), or per-process again with `None`. Evaluation mode is unaffected.
    pub fn set_stats_reducer(&mut self, reducer: Option<Arc<dyn BatchStatsReducer>>) {
        self.stats_reducer = reducer;
    }

    /// Whether training-mode statistics are synchronized across ranks.
    pub fn is_synchronized(&self) -> bool {
        self.stats_reducer.is_some()
    }

    fn run(&self, x: &Tensor, relu: bool) -> Result<Tensor> {
        if x.rank() != 4 {
            return Err(Error::shape(
                "BatchNorm2d",
                format!("expected [N, C, H, W], got {:?}", x.shape()),
            ));
        }
        if let (true, Some(r)) = (self.training, &self.stats_reducer) {
            let y = self.run_synchronized(x, relu, r.as_ref())?;
            self.count_batch()?;
            return Ok(y);
        }
        let p = BatchNormParams {
            training: self.training,
            momentum: self.momentum,
            eps: self.eps,
        };
        let stats = (Some(&self.running_mean), Some(&self.running_var));
        let affine = (Some(&self.weight), Some(&self.bias));
        let y = if relu {
            x.batch_norm_relu(stats.0, stats.1, affine.0, affine.1, p)?
        } else {
            x.batch_norm(stats.0, stats.1, affine.0, affine.1, p)?
        };
        if self.training {
            self.count_batch()?;
        }
        Ok(y)
    }

    /// Training-mode batch norm with statistics over every rank's batch, composed of
    /// differentiable ops in f32: mean = Σx / n and biased variance = Σ(x − mean)² / n, each
    /// sum taken locally per channel and then across ranks (two passes, so no cancellation);
    /// the running statistics get the unbiased variance of all n values, as PyTorch's
    /// `SyncBatchNorm`. The output has the input's dtype.
    fn run_synchronized(
        &self,
        x: &Tensor,
        relu: bool,
        r: &dyn BatchStatsReducer,
    ) -> Result<Tensor> {
        let c = x.dims()[1];
        if c != self.weight.elem_count() {
            return Err(Error::shape(
                "BatchNorm2d",
                format!(
                    "input {:?} has {c} channels, the layer {}",
                    x.dims(),
                    self.weight.elem_count()
                ),
            ));
        }
        let n = r.count_across((x.elem_count() / c.max(1)) as f64, x.device())?;
        if n <= 1.0 {
            return Err(Error::invalid(
                "BatchNorm2d",
                format!(
                    "Expected more than 1 value per channel when training, got input size {:?}",
                    x.dims()
                ),
            ));
        }
        let xf = match x.dtype() {
            DType::F32 => x.clone(),
            _ => x.to_dtype(DType::F32)?,
        };
        let per_channel = |t: &Tensor| t.reshape([1, c, 1, 1]);
        let mean = r
            .sum_across(&xf.sum_dims(&[0, 2, 3], false)?)?
            .div_scalar(n)?;
        let centred = xf.sub(&per_channel(&mean)?)?;
        let sq = centred.mul(&centred)?.sum_dims(&[0, 2, 3], false)?;
        let var = r.sum_across(&sq)?.div_scalar(n)?;
        let scale = var.add_scalar(self.eps)?.rsqrt()?.mul(&self.weight)?;
        let y = centred
            .mul(&per_channel(&scale)?)?
            .add(&per_channel(&self.bias)?)?;
        let y = if relu { y.relu()? } else { y };
        let y = match x.dtype() {
            DType::F32 => y,
            dt => y.to_dtype(dt)?,
        };
        let _g = no_grad();
        let m = self.momentum;
        let rm = self
            .running_mean
            .mul_scalar(1.0 - m)?
            .add(&mean.mul_scalar(m)?)?;
        let unbiased = var.mul_scalar(n / (n - 1.0))?;
        let rv = self
            .running_var
            .mul_scalar(1.0 - m)?
            .add(&unbiased.mul_scalar(m)?)?;
        self.running_mean.assign(&rm)?;
        self.running_var.assign(&rv)?;
        Ok(y)
    }

    /// `num_batches_tracked += 1`.
    fn count_batch(&self) -> Result<()> {
        {
            // The int64 counter is incremented on the host (8 bytes each way on a GPU: device
            // backends have no int64 arithmetic) and written back in place.
            let _g = no_grad();
            let counter = &self.num_batches_tracked;
            let n = counter
                .to_device(Device::Cpu)?
                .to_dtype(DType::F64)?
                .add_scalar(1.0)?
                .to_dtype(DType::I64)?
                .to_device(counter.device())?;
            counter.assign(&n)?;
        }
        Ok(())
    }
}

impl Module for BatchNorm2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, false)
    }
    fn visit_parameters(&self, prefix: &str, f: &mut Visitor<'_>) {
        f(&join(prefix, "weight"), &self.weight);
        f(&join(prefix, "bias"), &self.bias);
    }
    fn visit_buffers(&self, prefix: &str, f: &mut Visitor<'_>) {
        f(&join(prefix, "running_mean"), &self.running_mean);
        f(&join(prefix, "running_var"), &self.running_var);
        f(
            &join(prefix, "num_batches_tracked"),
            &self.num_batches_tracked,
        );
    }
    fn set_training(&mut self, on: bool) {
        self.training = on;
    }
    fn is_training(&self) -> bool {
        self.training
    }
    fn for_each_batch_norm(&mut self, f: &mut dyn FnMut(&mut BatchNorm2d)) {
        f(self)
    }
}
