//! Reductions over dims (sum, mean, max) with their gradients.

use super::float_only;
use crate::autograd::{get_or, save_if, track};
use crate::backend::{BinaryOp, ReduceOp};
use crate::cast_policy::AutocastOp;
use crate::{Error, Result, Shape, Tensor};

impl Tensor {
    fn resolve_dims(&self, op: &'static str, dims: &[usize]) -> Result<Vec<usize>> {
        let mut d = dims.to_vec();
        d.sort_unstable();
        d.dedup();
        if let Some(&bad) = d.iter().find(|&&x| x >= self.rank().max(1)) {
            return Err(Error::invalid(
                op,
                format!("dim {bad} out of range for shape {:?}", self.shape()),
            ));
        }
        if self.rank() == 0 {
            d.clear();
        }
        Ok(d)
    }

    fn reduce_raw(&self, op: ReduceOp, dims: &[usize]) -> Result<Tensor> {
        let s = self
            .backend()?
            .reduce(op, &self.storage(), self.layout(), dims)?;
        let mut kd = self.dims().to_vec();
        dims.iter().for_each(|&d| kd[d] = 1);
        Ok(Tensor::contiguous_from(s, kd))
    }

    fn squeeze_dims(t: Tensor, dims: &[usize], keepdim: bool) -> Result<Tensor> {
        if keepdim {
            return Ok(t);
        }
        let kept: Vec<usize> = t
            .dims()
            .iter()
            .enumerate()
            .filter(|(i, _)| !dims.contains(i))
            .map(|(_, &d)| d)
            .collect();
        t.reshape(kept)
    }

    fn reduce_tracked(
        &self,
        name: &'static str,
        op: ReduceOp,
        dims: &[usize],
        keepdim: bool,
    ) -> Result<Tensor> {
        float_only(name, self)?;
        let dims = self.resolve_dims(name, dims)?;
        let out = self.reduce_raw(op, &dims)?;
        let in_shape = self.shape().clone();
        let keep_shape = out.shape().clone();
        let count: usize = dims.iter().map(|&d| self.dims()[d]).product();
        // Only max/min read the input and output back (sum and mean save nothing).
        let keep = matches!(op, ReduceOp::Max | ReduceOp::Min);
        let (x, y) = (save_if(name, self, keep), save_if(name, &out, keep));
        let rdims = dims.clone();
        // The spread-out gradient of a sum or mean takes the input's memory format.
        let format = self.suggest_memory_format();
        let out = track(out, name, &[self], move |g| {
            let (x, y) = (get_or(&x, g)?, get_or(&y, g)?);
            let g = g.reshape(keep_shape.clone())?;
            let gx = match op {
                ReduceOp::Sum => g.broadcast_as(in_shape.clone())?.to_memory_format(format)?,
                ReduceOp::Mean => g
                    .div_scalar(count as f64)?
                    .broadcast_as(in_shape.clone())?
                    .to_memory_format(format)?,
                ReduceOp::Max | ReduceOp::Min => {
                    // Split the gradient evenly between tied extrema, as PyTorch's amax does.
                    let mask = x.binary_raw(BinaryOp::Eq, &y)?;
                    let ties = mask.reduce_raw(ReduceOp::Sum, &rdims)?;
                    mask.binary_raw(BinaryOp::Div, &ties)?
                        .binary_raw(BinaryOp::Mul, &g)?
                }
            };
            Ok(vec![Some(gx)])
        });
        Self::squeeze_dims(out, &dims, keepdim)
    }

    /// Sum over `dims` (accumulated in f32; f64 for F64).
    pub fn sum_dims(&self, dims: &[usize], keepdim: bool) -> Result<Tensor> {
        let x = &crate::cast_policy::cast_inputs(AutocastOp::Sum, &[self])?[0];
        x.reduce_tracked("sum", ReduceOp::Sum, dims, keepdim)
    }
    /// Mean over `dims`, in the input's dtype (accumulated in f32; f64 for F64). On no
    /// autocast list, as in PyTorch: an F16 input gives an F16 mean under autocast too.
    pub fn mean_dims(&self, dims: &[usize], keepdim: bool) -> Result<Tensor> {
        self.reduce_tracked("mean", ReduceOp::Mean, dims, keepdim)
    }
    /// Maximum over `dims` (gradient split evenly among ties).
    pub fn max_dims(&self, dims: &[usize], keepdim: bool) -> Result<Tensor> {
        self.reduce_tracked("max", ReduceOp::Max, dims, keepdim)
    }
    /// Minimum over `dims` (gradient split evenly among ties).
    pub fn min_dims(&self, dims: &[usize], keepdim: bool) -> Result<Tensor> {
        self.reduce_tracked("min", ReduceOp::Min, dims, keepdim)
    }
    /// Sum over one dim (negative counts from the end).
    pub fn sum(&self, dim: isize, keepdim: bool) -> Result<Tensor> {
        let d = self.shape().dim_index("sum", dim)?;
        self.sum_dims(&[d], keepdim)
    }
    /// Mean over one dim (negative counts from the end).
    pub fn mean(&self, dim: isize, keepdim: bool) -> Result<Tensor> {
        let d = self.shape().dim_index("mean", dim)?;
        self.mean_dims(&[d], keepdim)
    }
    /// Maximum over one dim (negative counts from the end).
    pub fn max(&self, dim: isize, keepdim: bool) -> Result<Tensor> {
        let d = self.shape().dim_index("max", dim)?;
        self.max_dims(&[d], keepdim)
    }
    /// Sum of all elements, shape `[]`.
    pub fn sum_all(&self) -> Result<Tensor> {
        let all: Vec<usize> = (0..self.rank()).collect();
        self.sum_dims(&all, false)?.reshape(Shape::from(()))
    }
    /// Mean of all elements, shape `[]`.
    pub fn mean_all(&self) -> Result<Tensor> {
        let all: Vec<usize> = (0..self.rank()).collect();
        self.mean_dims(&all, false)?.reshape(Shape::from(()))
    }
}
