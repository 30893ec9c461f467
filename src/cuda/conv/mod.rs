//! The CUDA conv family (`kernels-cu/conv.cu`): `ConvOps` for [`CudaBackend`] — fprop, dgrad
//! and wgrad as implicit GEMMs with f32 accumulation; groups = 1 (other groups are
//! `Unsupported`).
//!
//! Dispatch: f16/bf16 with a multiple of 8 output channels run on the Tensor-Core tier, which
//! takes NHWC activations and KRSC filters with C a multiple of 8: channels-last operands with
//! such C go straight in; otherwise the operands are packed once per call into NHWC with C
//! zero-padded to the next multiple of 8 (the ResNet stem's C = 3, or NCHW callers) and the
//! result unpacked — zero channels add nothing to any sum, so the result is the same. f32, and
//! f16/bf16 with other channel counts, run on the SIMT tier in either format. A GEMM with few
//! output tiles splits its K over blocks (`launch::splits`).
//!
//! Error bound, element-wise against an f64 reference from the same rounded inputs: the GEMM
//! bound `K·2⁻²³·Σ|a||b| + u_out·|y64|` with K = C·R·S (fprop), K·R·S (dgrad), N·P·Q (wgrad).

mod launch;

use super::backend::CudaBackend;
use super::operand::Span;
use super::storage::CudaBuffer;
use hemi_engine::backend::{Conv2dSpec, ConvOps};
use hemi_engine::{BackendStorage, DType, MemoryFormat, Result, StorageRef};
use launch::{ConvMode, Packing, Tier};
use std::sync::Arc;

/// Elements of the result of `mode`.
fn out_len(mode: ConvMode, spec: &Conv2dSpec) -> usize {
    let dims = match mode {
        ConvMode::Fprop => spec.output_dims(),
        ConvMode::Dgrad => spec.input_dims(),
        ConvMode::Wgrad => spec.weight_dims(),
    };
    dims.iter().product()
}

impl CudaBackend {
    /// Runs `mode` on `tier` into a fresh output (with a temporary split-K workspace when the
    /// GEMM is skinny).
    fn conv_tier(
        &self,
        mode: ConvMode,
        tier: Tier,
        spec: &Conv2dSpec,
        a: &CudaBuffer,
        b: &CudaBuffer,
    ) -> Result<CudaBuffer> {
        let out = self.buffer(spec.out_dtype.unwrap_or(a.dtype()), out_len(mode, spec))?;
        let splits = if spec.groups == 1 {
            launch::splits(mode, tier, spec)
        } else {
            1
        };
        let ws = match splits {
            1 => None,
            s => Some(self.buffer(DType::F32, launch::workspace_len(mode, spec, s))?),
        };
        let ws_span = ws.as_ref().map(Span::all);
        launch::conv(
            mode,
            tier,
            spec,
            &Span::all(a),
            &Span::all(b),
            &Span::all(&out),
            (splits, ws_span.as_ref()),
        )?;
        Ok(out)
    }

    /// `src` packed per `g` into a fresh NHWC buffer, or `None` when `needed` is false.
    fn conv_pack(&self, src: &CudaBuffer, g: Packing, needed: bool) -> Result<Option<CudaBuffer>> {
        if !needed {
            return Ok(None);
        }
        let dst = self.buffer(src.dtype(), g.n * g.s * g.cp)?;
        launch::repack(true, g, &Span::all(src), &Span::all(&dst))?;
        Ok(Some(dst))
    }

    /// Runs `mode` with operands `a`, `b` (dense in `spec.format`), choosing the tier.
    fn conv_run(
        &self,
        op: &'static str,
        mode: ConvMode,
        spec: &Conv2dSpec,
        a: &StorageRef,
        b: &StorageRef,
    ) -> Result<StorageRef> {
        spec.validate(op)?;
        let (a, b) = (self.get(op, a)?, self.get(op, b)?);
        let tensor_cores = matches!(a.dtype(), DType::F16 | DType::BF16)
            && spec.c_out.is_multiple_of(8)
            && spec.groups == 1;
        if !tensor_cores {
            return Ok(Arc::new(self.conv_tier(mode, Tier::Simt, spec, a, b)?));
        }
        let cl = spec.format == MemoryFormat::ChannelsLast;
        let cp = spec.c_in.next_multiple_of(8);
        let direct = cl && cp == spec.c_in;
        let mspec = Conv2dSpec {
            format: MemoryFormat::ChannelsLast,
            c_in: cp,
            ..*spec
        };
        let (hw, rs, pq) = (
            spec.h * spec.w,
            spec.kh * spec.kw,
            spec.out_h() * spec.out_w(),
        );
        let x_pack = Packing {
            n: spec.n,
            c: spec.c_in,
            s: hw,
            cp,
            channels_last: cl,
        };
        let w_pack = Packing {
            n: spec.c_out,
            c: spec.c_in,
            s: rs,
            cp,
            channels_last: cl,
        };
        let dy_pack = Packing {
            n: spec.n,
            c: spec.c_out,
            s: pq,
            cp: spec.c_out,
            channels_last: cl,
        };
        // (packed a, packed b, how the [M][N] result unpacks, whether it must)
        let (pa, pb, unpack, needs_unpack) = match mode {
            ConvMode::Fprop => (
                self.conv_pack(a, x_pack, !direct)?,
                self.conv_pack(b, w_pack, !direct)?,
                dy_pack,
                !cl,
            ),
            ConvMode::Dgrad => (
                self.conv_pack(a, dy_pack, !cl)?,
                self.conv_pack(b, w_pack, !direct)?,
                x_pack,
                !direct,
            ),
            ConvMode::Wgrad => (
                self.conv_pack(a, dy_pack, !cl)?,
                self.conv_pack(b, x_pack, !direct)?,
                w_pack,
                !direct,
            ),
        };
        let out = self.conv_tier(
            mode,
            Tier::Mma,
            &mspec,
            pa.as_ref().unwrap_or(a),
            pb.as_ref().unwrap_or(b),
        )?;
        if !needs_unpack {
            return Ok(Arc::new(out));
        }
        let dst = self.buffer(out.dtype(), out_len(mode, spec))?;
        launch::repack(false, unpack, &Span::all(&out), &Span::all(&dst))?;
        Ok(Arc::new(dst))
    }
}

impl ConvOps for CudaBackend {
    fn conv2d(&self, x: &StorageRef, w: &StorageRef, spec: &Conv2dSpec) -> Result<StorageRef> {
        self.conv_run("conv2d", ConvMode::Fprop, spec, x, w)
    }

    fn conv2d_backward_input(
        &self,
        dy: &StorageRef,
        w: &StorageRef,
        spec: &Conv2dSpec,
    ) -> Result<StorageRef> {
        self.conv_run("conv2d_backward_input", ConvMode::Dgrad, spec, dy, w)
    }

    fn conv2d_backward_weight(
        &self,
        x: &StorageRef,
        dy: &StorageRef,
        spec: &Conv2dSpec,
    ) -> Result<StorageRef> {
        self.conv_run("conv2d_backward_weight", ConvMode::Wgrad, spec, dy, x)
    }
}
