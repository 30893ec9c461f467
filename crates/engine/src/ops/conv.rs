//! 2-D convolution (NCHW input, OIHW weight, optional bias) with input and weight gradients.

use super::{expect_rank, float_only, from_storage_in, pair, promote_pair};
use crate::autograd::{track, Saved};
use crate::backend::Conv2dSpec;
use crate::cast_policy::AutocastOp;
use crate::{DType, Error, Result, Tensor};

/// Hyper-parameters of [`Tensor::conv2d`], as in `torch.nn.functional.conv2d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dParams {
    /// Step between windows `(h, w)`.
    pub stride: (usize, usize),
    /// Zero padding on each side `(h, w)`.
    pub padding: (usize, usize),
    /// Spacing between kernel taps `(h, w)`.
    pub dilation: (usize, usize),
    /// Channel groups (input and output channels must be divisible by it).
    pub groups: usize,
    /// Dtype of the output (`None`: the input dtype, as PyTorch). Accumulation is f32 either
    /// way, rounded once into it; the gradients keep the input's and weight's dtypes.
    pub out_dtype: Option<DType>,
}

impl Default for Conv2dParams {
    fn default() -> Self {
        Conv2dParams {
            stride: (1, 1),
            padding: (0, 0),
            dilation: (1, 1),
            groups: 1,
            out_dtype: None,
        }
    }
}

impl Conv2dParams {
    /// Square stride and padding, no dilation, one group.
    pub fn new(stride: usize, padding: usize) -> Self {
        Conv2dParams {
            stride: pair(stride),
            padding: pair(padding),
            ..Default::default()
        }
    }
}

impl Tensor {
    /// Convolution of `x [n, c_in, h, w]` with `w [c_out, c_in/groups, kh, kw]` plus an
    /// optional `bias [c_out]`; output `[n, c_out, out_h, out_w]`. Computes in f32 (f64 for
    /// F64) and rounds once; obeys DESIGN.md's GEMM bound with `K = c_in/groups·kh·kw`.
    ///
    /// Memory format: a channels-last input ([`Tensor::suggest_memory_format`]) runs the
    /// convolution channels-last (the weight converted to KRSC when it is not already) and gives
    /// a channels-last output and input gradient; any other input runs row-major (NCHW).
    pub fn conv2d(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        p: Conv2dParams,
    ) -> Result<Tensor> {
        const OP: &str = "conv2d";
        let (ins, rounded) = self.conv_inputs(weight, bias)?;
        let bias = ins.get(2);
        let (x, w) = match rounded {
            Some(_) => (ins[0].clone(), ins[1].clone()),
            None => promote_pair(OP, &ins[0], &ins[1])?,
        };
        float_only(OP, &x)?;
        expect_rank(OP, "input", &x, 4)?;
        expect_rank(OP, "weight", &w, 4)?;
        let (xd, wd) = (x.dims(), w.dims());
        let format = x.suggest_memory_format();
        let out_dtype = p.out_dtype.unwrap_or(x.dtype());
        if !out_dtype.is_float() {
            return Err(Error::dtype(
                OP,
                format!("output dtype {out_dtype} is not a float type"),
            ));
        }
        let spec = Conv2dSpec {
            format,
            out_dtype: Some(out_dtype),
            n: xd[0],
            c_in: xd[1],
            h: xd[2],
            w: xd[3],
            c_out: wd[0],
            kh: wd[2],
            kw: wd[3],
            stride: p.stride,
            padding: p.padding,
            dilation: p.dilation,
            groups: p.groups,
        };
        if p.groups == 0 || wd[1].checked_mul(p.groups) != Some(xd[1]) {
            return Err(Error::shape(
                OP,
                format!(
                    "input {:?} has {} channels but weight {:?} with groups {} expects {}",
                    x.shape(),
                    xd[1],
                    w.shape(),
                    p.groups,
                    wd[1].saturating_mul(p.groups)
                ),
            ));
        }
        spec.validate(OP)?;
        let (xc, wc) = (x.to_dense_buffer(format)?, w.to_dense_buffer(format)?);
        let be = x.backend()?;
        let s = match rounded {
            Some(_) => be.conv2d_rounding_weight(&xc.storage(), &wc.storage(), &spec)?,
            None => be.conv2d(&xc.storage(), &wc.storage(), &spec)?,
        };
        let out = from_storage_in(s, spec.output_dims().into(), format);
        // The dtype the weight was convolved in.
        let w_dtype = rounded.unwrap_or(wc.dtype());
        // Under autocast `wc` is a rounded copy of a parameter: save the parameter instead and
        // round it again in backward (the same values), rather than keep the copy alive from
        // forward to backward. Where the backend rounds an F32 weight as it reads it, the
        // backward skips the copy too and hands the parameter its gradient directly, rounded
        // to the copy's dtype and widened (what the cast's own backward would give).
        let recast = weight.is_leaf() && weight.dtype() != w_dtype;
        let direct = recast
            && weight.dtype() == DType::F32
            && w_dtype.is_half()
            && be.conv2d_rounds_f32_weight();
        let sw = Saved::new(OP, if recast { weight } else { &wc });
        let sx = Saved::new(OP, &xc);
        let in_dtype = x.dtype();
        let inputs = [&xc, if direct { weight } else { &wc }];
        // Only the gradients something needs (the stem's input image needs none: its
        // `dx` was a whole backward-input convolution for nothing).
        let (need_dx, need_dw) = (inputs[0].requires_grad(), inputs[1].requires_grad());
        let y = track(out, OP, &inputs, move |g| {
            let sx = sx.get()?;
            let sw = match recast {
                true if direct => sw.get()?.to_dense_buffer(format)?,
                true => sw.get()?.to_dtype(w_dtype)?.to_dense_buffer(format)?,
                false => sw.get()?,
            };
            let g = g.to_dtype(in_dtype)?.to_dense_buffer(format)?;
            let be = g.backend()?;
            let spec = Conv2dSpec {
                out_dtype: None,
                ..spec
            };
            let (gs, ss, ws) = (g.storage(), sx.storage(), sw.storage());
            let dx = match (need_dx, direct) {
                (false, _) => None,
                (true, true) => Some(be.conv2d_backward_input_rounding_weight(&gs, &ws, &spec)?),
                (true, false) => Some(be.conv2d_backward_input(&gs, &ws, &spec)?),
            };
            let dw = match (need_dw, direct) {
                (false, _) => None,
                (true, true) => Some(be.conv2d_backward_weight_widened(&ss, &gs, &spec)?),
                (true, false) => Some(be.conv2d_backward_weight(&ss, &gs, &spec)?),
            };
            Ok(vec![
                dx.map(|dx| from_storage_in(dx, sx.shape().clone(), format)),
                dw.map(|dw| from_storage_in(dw, sw.shape().clone(), format)),
            ])
        });
        match bias {
            None => Ok(y),
            Some(b) => {
                if b.dims() != [spec.c_out] {
                    return Err(Error::shape(
                        OP,
                        format!("bias {:?} for {} output channels", b.shape(), spec.c_out),
                    ));
                }
                y.add(&b.reshape([1, spec.c_out, 1, 1])?)
            }
        }
    }

    /// The inputs of a convolution after autocast, and the dtype the backend rounds an F32
    /// parameter weight to as it reads it (`None`: the weight, like the others, comes back
    /// cast). The weight is left to the backend when the policy allows it
    /// ([`crate::cast_policy::rounds_in_op`]), the backend can ([`ConvOps::conv2d_rounds_f32_weight`](crate::backend::ConvOps::conv2d_rounds_f32_weight)),
    /// and the input comes back in that dtype.
    fn conv_inputs(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
    ) -> Result<(Vec<Tensor>, Option<DType>)> {
        use crate::cast_policy::{cast_inputs, rounds_in_op};
        let op = AutocastOp::Conv2d;
        let rounded = rounds_in_op(op, weight)
            .filter(|_| weight.dtype() == DType::F32 && self.dims().len() == 4)
            .filter(|_| self.backend().is_ok_and(|b| b.conv2d_rounds_f32_weight()));
        if let Some(dtype) = rounded {
            let mut ins = match bias {
                Some(b) => cast_inputs(op, &[self, b])?,
                None => cast_inputs(op, &[self])?,
            };
            if ins[0].dtype() == dtype {
                ins.insert(1, weight.clone());
                return Ok((ins, Some(dtype)));
            }
        }
        let ins = match bias {
            Some(b) => cast_inputs(op, &[self, weight, b])?,
            None => cast_inputs(op, &[self, weight])?,
        };
        Ok((ins, None))
    }
}
