//! Softmax, log-softmax, cross-entropy (integer targets) and mean-squared error.

use super::{expect_rank, float_only, same_device};
use crate::autograd::{track, Saved};
use crate::backend::{CrossEntropySpec, Reduction};
use crate::cast_policy::AutocastOp;
use crate::{DType, Error, MemoryFormat, Result, Tensor};

impl Tensor {
    fn softmax_impl(&self, op: &'static str, dim: isize, log: bool) -> Result<Tensor> {
        float_only(op, self)?;
        let d = self.shape().dim_index(op, dim)?;
        let ac = if log {
            AutocastOp::LogSoftmax
        } else {
            AutocastOp::Softmax
        };
        let x = crate::cast_policy::cast_inputs(ac, &[self])?[0]
            .to_dense_buffer(MemoryFormat::Contiguous)?;
        let dims = x.dims();
        let three = if dims.is_empty() {
            (1, 1, 1)
        } else {
            (
                dims[..d].iter().product(),
                dims[d],
                dims[d + 1..].iter().product(),
            )
        };
        let s = x.backend()?.softmax(&x.storage(), three, log)?;
        let out = Tensor::contiguous_from(s, x.shape().clone());
        let y = Saved::new(op, &out);
        Ok(track(out, op, &[&x], move |g| {
            let y = y.get()?;
            let g = g.to_dense_buffer(MemoryFormat::Contiguous)?;
            let dx = g
                .backend()?
                .softmax_backward(&y.storage(), &g.storage(), three, log)?;
            Ok(vec![Some(Tensor::contiguous_from(dx, y.shape().clone()))])
        }))
    }

    /// Softmax along `dim` (max-subtracted, computed in f32 or f64, rounded once).
    pub fn softmax(&self, dim: isize) -> Result<Tensor> {
        self.softmax_impl("softmax", dim, false)
    }

    /// Log-softmax along `dim` (`x − max − log Σ e^(x−max)`).
    pub fn log_softmax(&self, dim: isize) -> Result<Tensor> {
        self.softmax_impl("log_softmax", dim, true)
    }

    /// Cross-entropy of logits `[n, c]` against I64 class targets `[n]`, as
    /// `torch.nn.functional.cross_entropy`: `ignore_index` samples contribute nothing (the
    /// mean divides by the others' count), `label_smoothing` mixes in the uniform
    /// distribution. A target outside `[0, c)` (other than `ignore_index`) is an error.
    /// Returns `[]` for mean/sum and `[n]` for [`Reduction::None`], in the logits' dtype.
    pub fn cross_entropy(&self, targets: &Tensor, spec: CrossEntropySpec) -> Result<Tensor> {
        const OP: &str = "cross_entropy";
        float_only(OP, self)?;
        expect_rank(OP, "logits", self, 2)?;
        same_device(OP, &[self, targets])?;
        if targets.dtype() != DType::I64 {
            return Err(Error::dtype(
                OP,
                format!(
                    "targets must be int64 class indices, got {}",
                    targets.dtype()
                ),
            ));
        }
        let (n, c) = (self.dims()[0], self.dims()[1]);
        if c == 0 && n > 0 {
            return Err(Error::invalid(
                OP,
                format!("logits {:?} have no classes for {n} targets", self.shape()),
            ));
        }
        if targets.dims() != [n] {
            return Err(Error::shape(
                OP,
                format!(
                    "targets {:?} for logits {:?}",
                    targets.shape(),
                    self.shape()
                ),
            ));
        }
        let x = crate::cast_policy::cast_inputs(AutocastOp::CrossEntropy, &[self])?[0]
            .to_dense_buffer(MemoryFormat::Contiguous)?;
        let t = targets.to_dense_buffer(MemoryFormat::Contiguous)?;
        let s = x
            .backend()?
            .cross_entropy(&x.storage(), &t.storage(), (n, c), &spec)?;
        let out_shape = if spec.reduction == Reduction::None {
            vec![n]
        } else {
            vec![]
        };
        let out = Tensor::contiguous_from(s, out_shape);
        let (sx, st) = (Saved::new(OP, &x), Saved::new(OP, &t));
        Ok(track(out, OP, &[&x], move |g| {
            let (sx, st) = (sx.get()?, st.get()?);
            let g = g.to_dense_buffer(MemoryFormat::Contiguous)?;
            let dx = g.backend()?.cross_entropy_backward(
                &sx.storage(),
                &st.storage(),
                &g.storage(),
                (n, c),
                &spec,
            )?;
            Ok(vec![Some(Tensor::contiguous_from(dx, [n, c]))])
        }))
    }

    /// Mean-squared error `(x − target)²` with the given reduction (shapes must match).
    pub fn mse_loss(&self, target: &Tensor, reduction: Reduction) -> Result<Tensor> {
        if self.shape() != target.shape() {
            return Err(Error::shape(
                "mse_loss",
                format!("input {:?} and target {:?}", self.shape(), target.shape()),
            ));
        }
        let ins = crate::cast_policy::cast_inputs(AutocastOp::MseLoss, &[self, target])?;
        let sq = ins[0].sub(&ins[1])?.square()?;
        match reduction {
            Reduction::None => Ok(sq),
            Reduction::Mean => sq.mean_all(),
            Reduction::Sum => sq.sum_all(),
        }
    }
}
