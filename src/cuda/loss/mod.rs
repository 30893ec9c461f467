//! The CUDA loss family: `LossOps` for [`CudaBackend`].

pub(crate) mod launch;

use super::backend::CudaBackend;
use super::operand::Span;
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
        softmax::softmax(&Span::all(src), &Span::all(&buf), dims, log)?;
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
        softmax::softmax_backward(&Span::all(ys), &Span::all(gs), &Span::all(&buf), dims, log)?;
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
        let (xs, ts) = (Span::all(x), Span::all(t));
        let eps = spec.label_smoothing as f32;
        softmax::cross_entropy(
            &xs,
            &ts,
            &Span::all(&losses),
            (n, c),
            spec.ignore_index,
            eps,
        )?;
        let losses: StorageRef = Arc::new(losses);
        let out: StorageRef = match spec.reduction {
            Reduction::None => losses,
            r => {
                let out = self.buffer(DType::F32, 1)?;
                let code = if r == Reduction::Mean { 1 } else { 2 };
                let ls = Span::all(self.get(OP, &losses)?);
                softmax::ce_reduce(&ls, &ts, spec.ignore_index, code, &Span::all(&out))?;
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
        let (ts, ws) = (Span::all(t), Span::new(OP, &w, 0, n)?);
        let gs = Span::all(self.get(OP, &g)?);
        softmax::ce_weights(&gs, &ts, spec.ignore_index, code, &ws)?;
        let eps = spec.label_smoothing as f32;
        softmax::cross_entropy_backward(
            &Span::all(x),
            &ts,
            &ws,
            &Span::all(&dx),
            (n, c),
            spec.ignore_index,
            eps,
        )?;
        Ok(Arc::new(dx))
    }
}
