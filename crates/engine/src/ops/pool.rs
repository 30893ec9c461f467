//! Max, average and adaptive average 2-D pooling over `[N, C, H, W]` tensors, with gradients;
//! a channels-last input gives a channels-last output and input gradient.

use super::{expect_rank, float_only, from_storage_in, pair};
use crate::autograd::track;
use crate::backend::Pool2dSpec;
use crate::{Error, Result, Tensor};

/// Options of [`Tensor::max_pool2d`] (`stride` defaults to the kernel, as in PyTorch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct MaxPool2dParams {
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub dilation: (usize, usize),
}

impl MaxPool2dParams {
    /// Square kernel, stride and padding.
    pub fn new(kernel: usize, stride: usize, padding: usize) -> Self {
        MaxPool2dParams {
            kernel: pair(kernel),
            stride: pair(stride),
            padding: pair(padding),
            dilation: (1, 1),
        }
    }
}

/// Options of [`Tensor::avg_pool2d`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct AvgPool2dParams {
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    /// Count zero padding in the divisor (PyTorch's default `true`).
    pub count_include_pad: bool,
}

impl AvgPool2dParams {
    /// Square kernel, stride and padding; padding counted in the divisor.
    pub fn new(kernel: usize, stride: usize, padding: usize) -> Self {
        AvgPool2dParams {
            kernel: pair(kernel),
            stride: pair(stride),
            padding: pair(padding),
            count_include_pad: true,
        }
    }
}

impl Tensor {
    fn pool_spec(
        &self,
        op: &'static str,
        k: (usize, usize),
        s: (usize, usize),
        p: (usize, usize),
        d: (usize, usize),
        cip: bool,
    ) -> Result<Pool2dSpec> {
        float_only(op, self)?;
        expect_rank(op, "input", self, 4)?;
        let x = self.dims();
        let spec = Pool2dSpec {
            format: self.suggest_memory_format(),
            n: x[0],
            c: x[1],
            h: x[2],
            w: x[3],
            kernel: k,
            stride: s,
            padding: p,
            dilation: d,
            count_include_pad: cip,
        };
        spec.validate(op)?;
        Ok(spec)
    }

    /// Max pooling of `[n, c, h, w]` (floor mode). Keeps the argmax of each window for the
    /// backward pass, which routes each output gradient to its argmax.
    pub fn max_pool2d(&self, p: MaxPool2dParams) -> Result<Tensor> {
        const OP: &str = "max_pool2d";
        let spec = self.pool_spec(OP, p.kernel, p.stride, p.padding, p.dilation, false)?;
        let x = self.to_dense_buffer(spec.format)?;
        let (y, idx) = x.backend()?.max_pool2d(&x.storage(), &spec)?;
        let out = from_storage_in(y, spec.output_dims().into(), spec.format);
        Ok(track(out, OP, &[&x], move |g| {
            let g = g.to_dense_buffer(spec.format)?;
            let dx = g
                .backend()?
                .max_pool2d_backward(&g.storage(), &idx, &spec)?;
            Ok(vec![Some(from_storage_in(
                dx,
                spec.input_dims().into(),
                spec.format,
            ))])
        }))
    }

    /// Average pooling of `[n, c, h, w]` (floor mode).
    pub fn avg_pool2d(&self, p: AvgPool2dParams) -> Result<Tensor> {
        const OP: &str = "avg_pool2d";
        let spec = self.pool_spec(
            OP,
            p.kernel,
            p.stride,
            p.padding,
            (1, 1),
            p.count_include_pad,
        )?;
        let x = self.to_dense_buffer(spec.format)?;
        let y = x.backend()?.avg_pool2d(&x.storage(), &spec)?;
        let out = from_storage_in(y, spec.output_dims().into(), spec.format);
        Ok(track(out, OP, &[&x], move |g| {
            let g = g.to_dense_buffer(spec.format)?;
            let dx = g.backend()?.avg_pool2d_backward(&g.storage(), &spec)?;
            Ok(vec![Some(from_storage_in(
                dx,
                spec.input_dims().into(),
                spec.format,
            ))])
        }))
    }

    /// Adaptive average pooling of `[n, c, h, w]` to `[n, c, oh, ow]`.
    pub fn adaptive_avg_pool2d(&self, out_hw: (usize, usize)) -> Result<Tensor> {
        const OP: &str = "adaptive_avg_pool2d";
        float_only(OP, self)?;
        expect_rank(OP, "input", self, 4)?;
        if out_hw.0 == 0 || out_hw.1 == 0 {
            return Err(Error::invalid(
                OP,
                format!("output size {out_hw:?} must be positive"),
            ));
        }
        let d = self.dims();
        crate::Shape::new([d[0], d[1], out_hw.0, out_hw.1]).checked_elem_count(OP)?;
        let format = self.suggest_memory_format();
        let x = self.to_dense_buffer(format)?;
        let d = x.dims();
        let dims = [d[0], d[1], d[2], d[3]];
        let y = x
            .backend()?
            .adaptive_avg_pool2d(&x.storage(), dims, out_hw, format)?;
        let odims = [dims[0], dims[1], out_hw.0, out_hw.1];
        let out = from_storage_in(y, odims.into(), format);
        Ok(track(out, OP, &[&x], move |g| {
            let g = g.to_dense_buffer(format)?;
            let dx =
                g.backend()?
                    .adaptive_avg_pool2d_backward(&g.storage(), dims, out_hw, format)?;
            Ok(vec![Some(from_storage_in(dx, dims.into(), format))])
        }))
    }
}
