//! The CUDA conv family (`kernels-cu/conv.cu`): `ConvOps` for [`CudaBackend`] — fprop, dgrad
//! and wgrad as implicit GEMMs (SIMT tier, f32/f16/bf16, f32 accumulation; groups = 1, other
//! groups are `Unsupported`); wgrad splits its long K over blocks (`launch::wgrad_splits`).
//!
//! Error bound, element-wise against an f64 reference from the same rounded inputs: the GEMM
//! bound `K·2⁻²³·Σ|a||b| + u_out·|y64|` with K = C·R·S (fprop), K·R·S (dgrad), N·P·Q (wgrad).

mod launch;

use super::backend::CudaBackend;
use super::operand::Span;
use hemi_engine::backend::{Conv2dSpec, ConvOps};
use hemi_engine::{BackendStorage, DType, Result, StorageRef};
use launch::ConvMode;
use std::sync::Arc;

impl CudaBackend {
    /// Runs `mode` with `a`, `b` and a fresh output of `out_len` elements of a's dtype (wgrad
    /// split over K with a temporary f32 workspace when its GEMM is skinny).
    fn conv_launch(
        &self,
        op: &'static str,
        mode: ConvMode,
        spec: &Conv2dSpec,
        a: &StorageRef,
        b: &StorageRef,
        out_len: usize,
    ) -> Result<StorageRef> {
        let (a, b) = (self.get(op, a)?, self.get(op, b)?);
        let out = self.buffer(a.dtype(), out_len)?;
        let splits = if mode == ConvMode::Wgrad && spec.groups == 1 {
            launch::wgrad_splits(spec)
        } else {
            1
        };
        let ws = match splits {
            1 => None,
            s => Some(self.buffer(DType::F32, launch::wgrad_workspace(spec, s))?),
        };
        let ws_span = ws.as_ref().map(Span::all);
        launch::conv(
            mode,
            spec,
            &Span::all(a),
            &Span::all(b),
            &Span::all(&out),
            (splits, ws_span.as_ref()),
        )?;
        Ok(Arc::new(out))
    }
}

impl ConvOps for CudaBackend {
    fn conv2d(&self, x: &StorageRef, w: &StorageRef, spec: &Conv2dSpec) -> Result<StorageRef> {
        spec.validate("conv2d")?;
        let len = spec.n * spec.c_out * spec.out_h() * spec.out_w();
        self.conv_launch("conv2d", ConvMode::Fprop, spec, x, w, len)
    }

    fn conv2d_backward_input(
        &self,
        dy: &StorageRef,
        w: &StorageRef,
        spec: &Conv2dSpec,
    ) -> Result<StorageRef> {
        const OP: &str = "conv2d_backward_input";
        spec.validate(OP)?;
        let len = spec.n * spec.c_in * spec.h * spec.w;
        self.conv_launch(OP, ConvMode::Dgrad, spec, dy, w, len)
    }

    fn conv2d_backward_weight(
        &self,
        x: &StorageRef,
        dy: &StorageRef,
        spec: &Conv2dSpec,
    ) -> Result<StorageRef> {
        const OP: &str = "conv2d_backward_weight";
        spec.validate(OP)?;
        let len = spec.c_out * (spec.c_in / spec.groups.max(1)) * spec.kh * spec.kw;
        self.conv_launch(OP, ConvMode::Wgrad, spec, dy, x, len)
    }
}
