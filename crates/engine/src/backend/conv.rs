//! The convolution family (a device may lack it: the default bodies say `Unsupported`).

use super::{unsupported, BackendDevice};
use crate::{DType, Error, MemoryFormat, Result, Shape, StorageRef};

/// Geometry of a 2-D convolution over input `[n, c_in, h, w]` with weight
/// `[c_out, c_in / groups, kh, kw]`; output `[n, c_out, out_h, out_w]`. Every activation,
/// filter and gradient storage of the call is dense in `format`: row-major (NCHW / KCRS) or
/// channels-last (NHWC / KRSC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Conv2dSpec {
    /// Memory format of every storage of the call.
    pub format: MemoryFormat,
    /// Dtype of the result (`None`: the inputs' dtype). Accumulation is f32 (f64 for F64)
    /// either way, rounded once into it.
    pub out_dtype: Option<DType>,
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub dilation: (usize, usize),
    pub groups: usize,
}

impl Conv2dSpec {
    /// Checks the geometry: positive sizes, channels divisible by groups, non-empty output.
    pub fn validate(&self, op: &'static str) -> Result<()> {
        let Conv2dSpec {
            stride,
            dilation,
            groups,
            ..
        } = *self;
        if stride.0 == 0 || stride.1 == 0 {
            return Err(Error::invalid(
                op,
                format!("stride {stride:?} must be positive"),
            ));
        }
        if dilation.0 == 0 || dilation.1 == 0 {
            return Err(Error::invalid(
                op,
                format!("dilation {dilation:?} must be positive"),
            ));
        }
        if groups == 0 || !self.c_in.is_multiple_of(groups) || !self.c_out.is_multiple_of(groups) {
            return Err(Error::invalid(
                op,
                format!(
                    "groups {groups} must divide in_channels {} and out_channels {}",
                    self.c_in, self.c_out
                ),
            ));
        }
        if self.kh == 0 || self.kw == 0 || self.c_out == 0 || self.c_in == 0 {
            return Err(Error::invalid(
                op,
                "kernel and channel sizes must be positive",
            ));
        }
        // Every size below must fit a usize (huge images or paddings would wrap).
        let padded = |size: usize, pad: usize| pad.checked_mul(2).and_then(|p| size.checked_add(p));
        let eff = |k: usize, d: usize| d.checked_mul(k - 1).and_then(|v| v.checked_add(1));
        let (Some(ph), Some(pw), Some(eff_h), Some(eff_w)) = (
            padded(self.h, self.padding.0),
            padded(self.w, self.padding.1),
            eff(self.kh, dilation.0),
            eff(self.kw, dilation.1),
        ) else {
            return Err(Error::invalid(op, format!("geometry {self:?} overflows")));
        };
        if ph < eff_h || pw < eff_w {
            return Err(Error::invalid(
                op,
                format!(
                    "input {}x{} with padding {:?} is smaller than the dilated kernel {eff_h}x{eff_w}",
                    self.h, self.w, self.padding
                ),
            ));
        }
        let (oh, ow) = ((ph - eff_h) / stride.0 + 1, (pw - eff_w) / stride.1 + 1);
        for dims in [
            [self.n, self.c_in, self.h, self.w],
            [self.c_out, self.c_in, self.kh, self.kw],
            [self.n, self.c_out, oh, ow],
        ] {
            Shape::new(dims).checked_elem_count(op)?;
        }
        Ok(())
    }
    /// Output height.
    pub fn out_h(&self) -> usize {
        (self.h + 2 * self.padding.0 - self.dilation.0 * (self.kh - 1) - 1) / self.stride.0 + 1
    }
    /// Output width.
    pub fn out_w(&self) -> usize {
        (self.w + 2 * self.padding.1 - self.dilation.1 * (self.kw - 1) - 1) / self.stride.1 + 1
    }
    /// Input dims `[n, c_in, h, w]`.
    pub fn input_dims(&self) -> [usize; 4] {
        [self.n, self.c_in, self.h, self.w]
    }
    /// Weight dims `[c_out, c_in / groups, kh, kw]`.
    pub fn weight_dims(&self) -> [usize; 4] {
        [self.c_out, self.c_in / self.groups.max(1), self.kh, self.kw]
    }
    /// Output dims `[n, c_out, out_h, out_w]`.
    pub fn output_dims(&self) -> [usize; 4] {
        [self.n, self.c_out, self.out_h(), self.out_w()]
    }
}

/// 2-D convolution forward and backward.
pub trait ConvOps: BackendDevice {
    /// Convolution forward; `x` and `w` of one dtype, dense in `spec.format`; the output in
    /// `spec.format` and `spec.out_dtype`.
    fn conv2d(&self, x: &StorageRef, w: &StorageRef, spec: &Conv2dSpec) -> Result<StorageRef> {
        let _ = (x, w, spec);
        Err(unsupported(self.device(), "conv2d"))
    }
    /// Gradient of the convolution's input from the output gradient `dy` (dense in
    /// `spec.format`, as `w` and the result).
    fn conv2d_backward_input(
        &self,
        dy: &StorageRef,
        w: &StorageRef,
        spec: &Conv2dSpec,
    ) -> Result<StorageRef> {
        let _ = (dy, w, spec);
        Err(unsupported(self.device(), "conv2d_backward_input"))
    }
    /// Gradient of the convolution's weight from the output gradient `dy` (dense in
    /// `spec.format`, as `x` and the result).
    fn conv2d_backward_weight(
        &self,
        x: &StorageRef,
        dy: &StorageRef,
        spec: &Conv2dSpec,
    ) -> Result<StorageRef> {
        let _ = (x, dy, spec);
        Err(unsupported(self.device(), "conv2d_backward_weight"))
    }
    /// Whether the device implements the three autocast-weight passes below
    /// ([`ConvOps::conv2d_rounding_weight`], [`ConvOps::conv2d_backward_input_rounding_weight`],
    /// [`ConvOps::conv2d_backward_weight_widened`]). Under autocast a convolution of a half
    /// input with an F32 parameter then runs on the F32 parameter itself instead of a half
    /// copy of it (the same values; two casts and one widening fewer per step).
    fn conv2d_rounds_f32_weight(&self) -> bool {
        false
    }
    /// [`ConvOps::conv2d`] of an F16/BF16 `x` with an F32 weight `w` rounded to `x`'s dtype
    /// (nearest even) as it is read: the result of casting the weight first.
    fn conv2d_rounding_weight(
        &self,
        x: &StorageRef,
        w: &StorageRef,
        spec: &Conv2dSpec,
    ) -> Result<StorageRef> {
        let _ = (x, w, spec);
        Err(unsupported(self.device(), "conv2d_rounding_weight"))
    }
    /// [`ConvOps::conv2d_backward_input`] of an F16/BF16 `dy` with an F32 weight `w` rounded to
    /// `dy`'s dtype (nearest even) as it is read: the result of casting the weight first.
    fn conv2d_backward_input_rounding_weight(
        &self,
        dy: &StorageRef,
        w: &StorageRef,
        spec: &Conv2dSpec,
    ) -> Result<StorageRef> {
        let _ = (dy, w, spec);
        Err(unsupported(
            self.device(),
            "conv2d_backward_input_rounding_weight",
        ))
    }
    /// [`ConvOps::conv2d_backward_weight`] of F16/BF16 `x` and `dy`, rounded once to their dtype
    /// and returned widened to F32: the gradient an F32 weight receives through its cast.
    fn conv2d_backward_weight_widened(
        &self,
        x: &StorageRef,
        dy: &StorageRef,
        spec: &Conv2dSpec,
    ) -> Result<StorageRef> {
        let _ = (x, dy, spec);
        Err(unsupported(self.device(), "conv2d_backward_weight_widened"))
    }
}
