//! Dtype conversion (round to nearest even; differentiable between float types).

use crate::autograd::track;
use crate::{DType, Result, Tensor};

impl Tensor {
    /// Converts to `dtype`. Float → float rounds to nearest even (bit-exact with `half`);
    /// float → I64 truncates toward zero. The memory format is kept. The gradient is cast back to the source dtype.
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        let f = self.suggest_memory_format();
        let s = self.backend()?.cast(
            &self.storage(),
            &super::in_memory_order(self.layout(), f),
            dtype,
        )?;
        let out = super::from_storage_in(s, self.shape().clone(), f);
        if !dtype.is_float() {
            return Ok(out);
        }
        let src = self.dtype();
        Ok(track(out, "to_dtype", &[self], move |g| {
            Ok(vec![Some(g.to_dtype(src)?)])
        }))
    }
}
