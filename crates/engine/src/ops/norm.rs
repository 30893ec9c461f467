//! Batch normalization (training with batch statistics and a momentum update of the running
//! statistics; evaluation with the running statistics).

use super::{float_only, from_storage_in, same_device};
use crate::autograd::{no_grad, track, Saved};
use crate::{DType, Error, MemoryFormat, Result, Tensor};

/// Options of [`Tensor::batch_norm`], as in `torch.nn.functional.batch_norm`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchNormParams {
    /// Use batch statistics (and update the running ones) rather than the running ones.
    pub training: bool,
    /// Weight of the new batch statistic in the running average (PyTorch default 0.1).
    pub momentum: f64,
    /// Added to the variance before the square root (PyTorch default 1e-5).
    pub eps: f64,
}

impl Default for BatchNormParams {
    fn default() -> Self {
        BatchNormParams {
            training: true,
            momentum: 0.1,
            eps: 1e-5,
        }
    }
}

fn check_channels(what: &str, t: Option<&Tensor>, c: usize, x: &Tensor) -> Result<()> {
    if let Some(t) = t {
        if t.dims() != [c] {
            return Err(Error::shape(
                "batch_norm",
                format!(
                    "{what} {:?} for input {:?} with {c} channels",
                    t.shape(),
                    x.shape()
                ),
            ));
        }
        float_only("batch_norm", t)?;
    }
    Ok(())
}

impl Tensor {
    /// Batch norm of `x [N, C, *]` over all dims but `C`. `weight`/`bias` `[C]` default to
    /// 1/0; the statistics dtype is the weight's (or x's when there is none), so fp16 inputs
    /// with fp32 parameters keep fp32 statistics. Training updates `running_mean`/`running_var`
    /// in place: `r ← (1−m)·r + m·stat`, with the unbiased variance. The output has x's dtype
    /// and memory format (a channels-last x gives a channels-last output and gradient).
    pub fn batch_norm(
        &self,
        running_mean: Option<&Tensor>,
        running_var: Option<&Tensor>,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        p: BatchNormParams,
    ) -> Result<Tensor> {
        self.batch_norm_impl([running_mean, running_var, weight, bias], p, false)
    }

    /// `batch_norm(..).relu()` as one op: in training mode the backends clamp in the pass that
    /// writes the output and apply the ReLU's mask as batch norm's backward reads the output
    /// gradient (from the saved output), saving a read and a write of the activation in each
    /// direction. Same values as the two ops (bit for bit: the clamp commutes with rounding);
    /// the gradient where the output is 0 is 0, as PyTorch's `threshold_backward`. Eval mode
    /// runs the two ops.
    ///
    /// ```
    /// use hemi_engine::{BatchNormParams, DType, Device, Tensor};
    /// let x = Tensor::randn([4, 3, 5, 5], DType::F32, Device::Cpu)?;
    /// let fused = x.batch_norm_relu(None, None, None, None, BatchNormParams::default())?;
    /// let two = x.batch_norm(None, None, None, None, BatchNormParams::default())?.relu()?;
    /// assert_eq!(fused.to_vec::<f32>()?, two.to_vec::<f32>()?);
    /// # Ok::<(), hemi_engine::Error>(())
    /// ```
    pub fn batch_norm_relu(
        &self,
        running_mean: Option<&Tensor>,
        running_var: Option<&Tensor>,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        p: BatchNormParams,
    ) -> Result<Tensor> {
        self.batch_norm_impl([running_mean, running_var, weight, bias], p, true)
    }

    fn batch_norm_impl(
        &self,
        [running_mean, running_var, weight, bias]: [Option<&Tensor>; 4],
        p: BatchNormParams,
        relu: bool,
    ) -> Result<Tensor> {
        const OP: &str = "batch_norm";
        float_only(OP, self)?;
        if self.rank() < 2 {
            return Err(Error::shape(
                OP,
                format!("input must be [N, C, *], got {:?}", self.shape()),
            ));
        }
        let (n, c) = (self.dims()[0], self.dims()[1]);
        let s: usize = self.dims()[2..].iter().product();
        for (what, t) in [
            ("weight", weight),
            ("bias", bias),
            ("running_mean", running_mean),
            ("running_var", running_var),
        ] {
            check_channels(what, t, c, self)?;
            if let Some(t) = t {
                same_device(OP, &[self, t])?;
            }
        }
        let stat_dtype = weight.map(|w| w.dtype()).unwrap_or(match self.dtype() {
            DType::F64 => DType::F64,
            _ => DType::F32,
        });
        let w = match weight {
            Some(w) => w.clone(),
            None => Tensor::ones([c], stat_dtype, self.device())?,
        };
        let b = match bias {
            Some(b) => b.to_dtype(stat_dtype)?,
            None => Tensor::zeros([c], stat_dtype, self.device())?,
        };
        if !p.training {
            let y = self.batch_norm_eval(running_mean, running_var, &w, &b, stat_dtype, p.eps)?;
            return if relu { y.relu() } else { Ok(y) };
        }
        if n * s <= 1 {
            return Err(Error::invalid(
                OP,
                format!(
                    "expected more than 1 value per channel when training, got input {:?}",
                    self.shape()
                ),
            ));
        }
        // Channels-last storage is [N·H·W, C] row-major: the backends' [N, C, S] layout with
        // N·H·W rows and S = 1, so the same kernels keep the format.
        let format = self.suggest_memory_format();
        let x = self.to_dense_buffer(format)?;
        let dims = match format {
            MemoryFormat::ChannelsLast => (n * s, c, 1),
            MemoryFormat::Contiguous => (n, c, s),
        };
        let be = x.backend()?;
        let fwd =
            be.batch_norm_train(&x.storage(), &w.storage(), &b.storage(), dims, p.eps, relu)?;
        let stat = |st| Tensor::contiguous_from(st, [c]);
        let (mean, var, invstd) = (stat(fwd.mean), stat(fwd.var), stat(fwd.invstd));
        {
            let _g = no_grad();
            let unbias = (n * s) as f64 / (n * s - 1) as f64;
            if let Some(rm) = running_mean {
                rm.assign(
                    &rm.affine(1.0 - p.momentum, 0.0)?
                        .add(&mean.mul_scalar(p.momentum)?)?,
                )?;
            }
            if let Some(rv) = running_var {
                rv.assign(
                    &rv.affine(1.0 - p.momentum, 0.0)?
                        .add(&var.mul_scalar(p.momentum * unbias)?)?,
                )?;
            }
        }
        let out = from_storage_in(fwd.y, self.shape().clone(), format);
        let (sx, sw) = (Saved::new(OP, &x), Saved::new(OP, &w));
        let sz = relu.then(|| Saved::new(OP, &out));
        Ok(track(out, OP, &[&x, &w, &b], move |g| {
            let (sx, sw) = (sx.get()?, sw.get()?);
            let g = g.to_dense_buffer(format)?;
            let z = sz.as_ref().map(Saved::get).transpose()?;
            let r = g.backend()?.batch_norm_backward(
                &g.storage(),
                &sx.storage(),
                &sw.storage(),
                &mean.storage(),
                &invstd.storage(),
                dims,
                z.map(|z| z.storage()).as_ref(),
            )?;
            Ok(vec![
                Some(from_storage_in(r.dx, sx.shape().clone(), format)),
                Some(Tensor::contiguous_from(r.dweight, [c])),
                Some(Tensor::contiguous_from(r.dbias, [c])),
            ])
        }))
    }

    /// Eval-mode batch norm as differentiable tensor ops in the statistics dtype, rounded once
    /// into x's dtype: `y = x·scale + shift`, `scale = w/√(rv+eps)`, `shift = b − rm·scale`.
    fn batch_norm_eval(
        &self,
        running_mean: Option<&Tensor>,
        running_var: Option<&Tensor>,
        w: &Tensor,
        b: &Tensor,
        stat_dtype: DType,
        eps: f64,
    ) -> Result<Tensor> {
        let (Some(rm), Some(rv)) = (running_mean, running_var) else {
            return Err(Error::invalid(
                "batch_norm",
                "evaluation mode needs running_mean and running_var",
            ));
        };
        let c = self.dims()[1];
        let mut bshape = vec![1; self.rank()];
        bshape[1] = c;
        let scale = w
            .to_dtype(stat_dtype)?
            .mul(&rv.detach().add_scalar(eps)?.rsqrt()?)?;
        let shift = b.sub(&rm.detach().mul(&scale)?)?;
        let y = self
            .to_dtype(stat_dtype)?
            .mul(&scale.reshape(bshape.clone())?)?
            .add(&shift.reshape(bshape)?)?;
        y.to_dtype(self.dtype())
    }
}
