//! The CUDA loss family: `LossOps` for [`CudaBackend`].

pub(crate) mod launch;

use super::backend::CudaBackend;
use hemi_engine::backend::*;
use hemi_engine::{BackendStorage, DType, Layout, Result, StorageRef};
use launch as softmax;
use std::sync::Arc;

impl LossOps for CudaBackend {
    fn softmax(
        &self,
        x: &StorageRef,
        dims: (usize, usize, usize),
        log: bool,
    ) -> Result<StorageRef> {
        let src = self.get("softmax", x)?;
        self.expect_len("softmax", src, dims.0 * dims.1 * dims.2)?;
        let buf = self.buffer(src.dtype(), src.len())?;
        if src.len() > 0 {
            softmax::softmax(self.driver(), src.dtype(), src.ptr(), buf.ptr(), dims, log)?;
        }
        Ok(Arc::new(buf))
    }

    fn softmax_backward(
        &self,
        y: &StorageRef,
        dy: &StorageRef,
        dims: (usize, usize, usize),
        log: bool,
    ) -> Result<StorageRef> {
        let (ys, gs) = (
            self.get("softmax_backward", y)?,
            self.get("softmax_backward", dy)?,
        );
        self.expect_len("softmax_backward", ys, dims.0 * dims.1 * dims.2)?;
        self.expect_len("softmax_backward", gs, ys.len())?;
        let buf = self.buffer(gs.dtype(), gs.len())?;
        if gs.len() > 0 {
            softmax::softmax_backward(
                self.driver(),
                gs.dtype(),
                ys.ptr(),
                gs.ptr(),
                buf.ptr(),
                dims,
                log,
            )?;
        }
        Ok(Arc::new(buf))
    }

    fn cross_entropy(
        &self,
        logits: &StorageRef,
        targets: &StorageRef,
        n_c: (usize, usize),
        spec: &CrossEntropySpec,
    ) -> Result<StorageRef> {
        const OP: &str = "cross_entropy";
        let (x, t) = self.ce_inputs(OP, logits, targets, n_c, spec)?;
        let (n, c) = n_c;
        let losses = self.buffer(DType::F32, n)?;
        if n > 0 {
            let eps = spec.label_smoothing as f32;
            softmax::cross_entropy(
                self.driver(),
                x.dtype(),
                x.ptr(),
                t.ptr(),
                losses.ptr(),
                n,
                c,
                spec.ignore_index,
                eps,
            )?;
        }
        let losses: StorageRef = Arc::new(losses);
        let out: StorageRef = match spec.reduction {
            Reduction::None => losses,
            r => {
                let out = self.buffer(DType::F32, 1)?;
                let code = if r == Reduction::Mean { 1 } else { 2 };
                let lp = self.get(OP, &losses)?.ptr();
                softmax::ce_reduce(
                    self.driver(),
                    lp,
                    t.ptr(),
                    n,
                    spec.ignore_index,
                    code,
                    out.ptr(),
                )?;
                Arc::new(out)
            }
        };
        let len = out.len();
        self.cast(&out, &Layout::contiguous([len]), x.dtype())
    }

    fn cross_entropy_backward(
        &self,
        logits: &StorageRef,
        targets: &StorageRef,
        dloss: &StorageRef,
        n_c: (usize, usize),
        spec: &CrossEntropySpec,
    ) -> Result<StorageRef> {
        const OP: &str = "cross_entropy_backward";
        let (x, t) = self.ce_inputs(OP, logits, targets, n_c, spec)?;
        let (n, c) = n_c;
        let want = if spec.reduction == Reduction::None {
            n
        } else {
            1
        };
        self.expect_len(OP, self.get(OP, dloss)?, want)?;
        let g = self.cast(dloss, &Layout::contiguous([want]), DType::F32)?;
        let w = self.buffer(DType::F32, n.max(1))?;
        let code = match spec.reduction {
            Reduction::None => 0,
            Reduction::Mean => 1,
            Reduction::Sum => 2,
        };
        let dx = self.buffer(x.dtype(), n * c)?;
        if n > 0 {
            let d = self.driver();
            softmax::ce_weights(
                d,
                self.get(OP, &g)?.ptr(),
                t.ptr(),
                n,
                spec.ignore_index,
                code,
                w.ptr(),
            )?;
            let eps = spec.label_smoothing as f32;
            softmax::cross_entropy_backward(
                d,
                x.dtype(),
                x.ptr(),
                t.ptr(),
                w.ptr(),
                dx.ptr(),
                n,
                c,
                spec.ignore_index,
                eps,
            )?;
        }
        Ok(Arc::new(dx))
    }
}
