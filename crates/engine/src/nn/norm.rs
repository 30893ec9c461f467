//! Batch normalization layer.

use super::{init, join, Module, Visitor};
use crate::{no_grad, BatchNormParams, DType, Device, Error, Result, Tensor};

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
        })
    }
}

impl BatchNorm2d {
    /// `relu(self.forward(x))` through the fused [`Tensor::batch_norm_relu`] (same values and
    /// gradients, one pass over the activation fewer each way); what ResNet's blocks call.
    pub fn forward_relu(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, true)
    }

    fn run(&self, x: &Tensor, relu: bool) -> Result<Tensor> {
        if x.rank() != 4 {
            return Err(Error::shape(
                "BatchNorm2d",
                format!("expected [N, C, H, W], got {:?}", x.shape()),
            ));
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
        Ok(y)
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
}
