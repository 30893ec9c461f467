//! In-place writes, with PyTorch's semantics: a write goes into the tensor's storage, so every
//! view and detached handle of that storage sees it, and it bumps the storage's version
//! counter, so a backward pass that saved the storage before the write fails loudly instead of
//! computing with the new values. None of these are recorded by autograd.

use super::Tensor;
use crate::{Error, Result};
use std::sync::Arc;

impl Tensor {
    /// The version of this tensor's storage: the number of in-place writes into it so far
    /// (shared by every view and detached handle of the storage).
    ///
    /// ```
    /// use hemi_engine::{DType, Device, Tensor};
    /// let w = Tensor::zeros([3], DType::F32, Device::Cpu)?;
    /// let view = w.detach();
    /// w.assign(&Tensor::ones([3], DType::F32, Device::Cpu)?)?;
    /// assert_eq!(view.to_vec::<f32>()?, vec![1.0; 3]);   // the write is visible
    /// assert_eq!(view.version(), 1);
    /// # Ok::<(), hemi_engine::Error>(())
    /// ```
    pub fn version(&self) -> u64 {
        self.storage().version().get()
    }

    /// Records an in-place write into this tensor's storage (for code that called an in-place
    /// backend op on it directly).
    pub fn mark_modified(&self) {
        self.storage().version().bump();
    }

    /// Whether this tensor is a contiguous view of its entire storage (what the in-place
    /// training updates write into).
    pub fn owns_whole_buffer(&self) -> bool {
        self.layout().is_contiguous() && self.densely_owns_buffer()
    }

    /// Whether this tensor densely covers its entire storage in some memory format (row-major
    /// or channels-last): a gradient that may be kept as is.
    pub(crate) fn densely_owns_buffer(&self) -> bool {
        self.layout().memory_format().is_some()
            && self.layout().offset() == 0
            && self.elem_count() == self.storage().len()
    }

    /// Whether anything else holds this tensor's handle or storage (clones, views, detached
    /// copies): an in-place write into it would be seen there.
    pub(crate) fn storage_is_shared(&self) -> bool {
        // The storage: one reference is this tensor's, one the temporary from `storage()`.
        Arc::strong_count(&self.0) > 1 || Arc::strong_count(&self.storage()) > 2
    }

    /// A new tensor with its own contiguous copy of the data, on the same device, outside any
    /// graph (`torch.Tensor.clone().detach()`).
    pub fn deep_copy(&self) -> Result<Tensor> {
        let s = self
            .backend()?
            .copy_strided(&self.storage(), self.layout())?;
        Ok(Tensor::contiguous_from(s, self.shape().clone()))
    }

    /// Overwrites this tensor's data with `src` (same shape; moved to this device and rounded
    /// to this dtype), in place: views and detached handles of this storage see the new
    /// values (as `torch.Tensor.copy_`). The destination must be contiguous. Not recorded by
    /// autograd: use it for parameter and buffer updates.
    pub fn assign(&self, src: &Tensor) -> Result<()> {
        if src.shape() != self.shape() {
            return Err(Error::shape(
                "assign",
                format!("source {:?} into {:?}", src.shape(), self.shape()),
            ));
        }
        if !self.layout().is_contiguous() {
            return Err(Error::invalid("assign", "destination must be contiguous"));
        }
        let src = src.to_device(self.device())?;
        self.backend()?.copy_into(
            &self.storage(),
            self.layout().offset(),
            &src.storage(),
            src.layout(),
        )?;
        self.mark_modified();
        Ok(())
    }

    /// `self += src` in place (same shape, dtype and device; `self` must be a contiguous view
    /// of its whole buffer, as gradients are). Used for gradient accumulation.
    pub fn add_(&self, src: &Tensor) -> Result<()> {
        const OP: &str = "add_";
        if src.shape() != self.shape() {
            return Err(Error::shape(
                OP,
                format!("{:?} into {:?}", src.shape(), self.shape()),
            ));
        }
        crate::ops::same_device(OP, &[self, src])?;
        if src.dtype() != self.dtype() {
            return Err(Error::dtype(
                OP,
                format!("{} into {}", src.dtype(), self.dtype()),
            ));
        }
        if !self.owns_whole_buffer() {
            return Err(Error::invalid(
                OP,
                "destination must be a contiguous view of its whole buffer",
            ));
        }
        let src = if src.owns_whole_buffer() {
            src.clone()
        } else {
            src.deep_copy()?
        };
        self.backend()?
            .accumulate(&self.storage(), &src.storage())?;
        self.mark_modified();
        Ok(())
    }
}
