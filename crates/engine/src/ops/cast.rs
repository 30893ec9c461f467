//! Dtype conversion (round to nearest even; differentiable between float types).

use crate::autograd::track;
use crate::{DType, Result, Tensor};

impl Tensor {
    /// Converts to `dtype`. Float → float rounds to nearest even (bit-exact with `half`);
    /// float → I64 truncates toward zero. The gradient is cast back to the source dtype.
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        let s = self
            .backend()?
            .cast(&self.storage(), self.layout(), dtype)?;
        let out = Tensor::contiguous_from(s, self.shape().clone());
        if !dtype.is_float() {
            return Ok(out);
        }
        let src = self.dtype();
        Ok(track(out, "to_dtype", &[self], move |g| {
            Ok(vec![Some(g.to_dtype(src)?)])
        }))
    }
}
