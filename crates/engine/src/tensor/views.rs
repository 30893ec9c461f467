//! Shape views: reshape, flatten, transpose, permute, (un)squeeze, broadcast, contiguous.
//! Views share storage with their source; all are differentiable.

use super::Tensor;
use crate::autograd::track;
use crate::{Error, Layout, MemoryFormat, Result, Shape};

impl Tensor {
    /// A tensor over the same storage with another layout (no graph node).
    fn view_with(&self, layout: Layout) -> Tensor {
        Tensor::from_storage(self.storage(), layout)
    }

    /// Same elements in a new shape with the same element count. A view when the tensor is
    /// contiguous, else a copy.
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if shape.checked_elem_count("reshape")? != self.elem_count() {
            return Err(Error::shape(
                "reshape",
                format!(
                    "cannot reshape {:?} ({} elements) to {shape:?}",
                    self.shape(),
                    self.elem_count()
                ),
            ));
        }
        let src = self.contiguous()?;
        let strides = shape.contiguous_strides();
        let out = src.view_with(Layout::new(shape, strides, src.layout().offset()));
        let orig = self.shape().clone();
        Ok(track(out, "reshape", &[&src], move |g| {
            Ok(vec![Some(g.reshape(orig.clone())?)])
        }))
    }

    /// Merges dims `start..=end` into one (negative indices count from the end).
    pub fn flatten(&self, start: isize, end: isize) -> Result<Tensor> {
        let (s, e) = (
            self.shape().dim_index("flatten", start)?,
            self.shape().dim_index("flatten", end)?,
        );
        if self.rank() == 0 {
            // Only dims 0 and -1 exist (checked above), as in PyTorch.
            return self.reshape([1]);
        }
        if s > e {
            return Err(Error::invalid(
                "flatten",
                format!("start dim {start} after end dim {end}"),
            ));
        }
        let d = self.dims();
        let mut dims = d[..s].to_vec();
        dims.push(d[s..=e].iter().product());
        dims.extend_from_slice(&d[e + 1..]);
        self.reshape(dims)
    }

    /// Swaps two dims (a view).
    pub fn transpose(&self, a: isize, b: isize) -> Result<Tensor> {
        let (a, b) = (
            self.shape().dim_index("transpose", a)?,
            self.shape().dim_index("transpose", b)?,
        );
        if self.rank() == 0 {
            return Ok(self.clone());
        }
        let out = self.view_with(self.layout().transpose(a, b));
        Ok(track(out, "transpose", &[self], move |g| {
            Ok(vec![Some(g.transpose(a as isize, b as isize)?)])
        }))
    }

    /// Transpose of a 2-D tensor (swaps the last two dims of higher ranks).
    pub fn t(&self) -> Result<Tensor> {
        if self.rank() < 2 {
            return Err(Error::invalid(
                "t",
                format!("needs at least 2 dims, got {:?}", self.shape()),
            ));
        }
        self.transpose(-2, -1)
    }

    /// Reorders dims: output dim `i` is input dim `perm[i]` (a view).
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        let rank = self.rank();
        let mut seen = vec![false; rank];
        if perm.len() != rank
            || perm
                .iter()
                .any(|&p| p >= rank || std::mem::replace(&mut seen[p], true))
        {
            return Err(Error::invalid(
                "permute",
                format!(
                    "{perm:?} is not a permutation of the dims of {:?}",
                    self.shape()
                ),
            ));
        }
        let out = self.view_with(self.layout().permute(perm));
        let mut inverse = vec![0; rank];
        for (i, &p) in perm.iter().enumerate() {
            inverse[p] = i;
        }
        Ok(track(out, "permute", &[self], move |g| {
            Ok(vec![Some(g.permute(&inverse)?)])
        }))
    }

    /// A contiguous tensor with the same values (the same tensor if already contiguous).
    pub fn contiguous(&self) -> Result<Tensor> {
        if self.layout().is_contiguous() {
            return Ok(self.clone());
        }
        let s = self
            .backend()?
            .copy_strided(&self.storage(), self.layout())?;
        let out = Tensor::contiguous_from(s, self.shape().clone());
        Ok(track(out, "contiguous", &[self], |g| {
            Ok(vec![Some(g.clone())])
        }))
    }

    /// The same values with the elements laid out in `format` (`torch.Tensor.to(memory_format=
    /// ...)`): the shape is unchanged, only the strides. Returns `self` when it already is in
    /// `format`, else a differentiable copy. `ChannelsLast` needs a 4-D tensor.
    ///
    /// ```
    /// use hemi_engine::{DType, Device, MemoryFormat, Tensor};
    /// let x = Tensor::randn([2, 3, 4, 5], DType::F32, Device::Cpu)?;
    /// let cl = x.to_memory_format(MemoryFormat::ChannelsLast)?;
    /// assert_eq!(cl.dims(), x.dims());
    /// assert_eq!(cl.layout().strides(), &[60, 1, 15, 3]);
    /// assert!(cl.is_contiguous_for(MemoryFormat::ChannelsLast) && !cl.is_contiguous_for(MemoryFormat::Contiguous));
    /// assert_eq!(cl.to_vec::<f32>()?, x.to_vec::<f32>()?);
    /// # Ok::<(), hemi_engine::Error>(())
    /// ```
    pub fn to_memory_format(&self, format: MemoryFormat) -> Result<Tensor> {
        match format {
            MemoryFormat::Contiguous => self.contiguous(),
            MemoryFormat::ChannelsLast => {
                if self.rank() != 4 {
                    return Err(Error::invalid(
                        "to_memory_format",
                        format!(
                            "channels_last needs a 4-D [N, C, H, W] tensor, got {:?}",
                            self.shape()
                        ),
                    ));
                }
                if self.is_contiguous_for(format) {
                    return Ok(self.clone());
                }
                self.permute(&[0, 2, 3, 1])?
                    .contiguous()?
                    .permute(&[0, 3, 1, 2])
            }
        }
    }

    /// The values as a tensor dense in `format` that starts at element 0 of a storage holding
    /// exactly its elements — what the ops that hand a bare storage to a backend need. The same
    /// tensor when it already is; a differentiable copy for a strided view, or for a dense
    /// window of a larger buffer (e.g. narrowed along dim 0).
    pub(crate) fn to_dense_buffer(&self, format: MemoryFormat) -> Result<Tensor> {
        let t = self.to_memory_format(format)?;
        if t.layout().offset() == 0 && t.storage().len() == t.elem_count() {
            return Ok(t);
        }
        let l = crate::ops::in_memory_order(t.layout(), format);
        let s = t.backend()?.copy_strided(&t.storage(), &l)?;
        let out = crate::ops::from_storage_in(s, t.shape().clone(), format);
        Ok(track(out, "contiguous", &[&t], |g| {
            Ok(vec![Some(g.clone())])
        }))
    }

    /// True when the elements lie densely in `format`'s order (`torch.Tensor.is_contiguous(
    /// memory_format=...)`); see [`Layout::is_contiguous_for`].
    pub fn is_contiguous_for(&self, format: MemoryFormat) -> bool {
        self.layout().is_contiguous_for(format)
    }

    /// The memory format ops keep for this tensor's outputs: `ChannelsLast` for a 4-D tensor
    /// laid out NHWC that is not also row-major, else `Contiguous` (PyTorch's
    /// `suggest_memory_format`).
    pub fn suggest_memory_format(&self) -> MemoryFormat {
        match self.layout().memory_format() {
            Some(MemoryFormat::ChannelsLast) => MemoryFormat::ChannelsLast,
            _ => MemoryFormat::Contiguous,
        }
    }

    /// Inserts a dim of size 1 at `dim` (`-1` appends).
    pub fn unsqueeze(&self, dim: isize) -> Result<Tensor> {
        let rank = self.rank() as isize;
        let d = if dim < 0 { dim + rank + 1 } else { dim };
        if d < 0 || d > rank {
            return Err(Error::invalid(
                "unsqueeze",
                format!("dim {dim} for shape {:?}", self.shape()),
            ));
        }
        let mut dims = self.dims().to_vec();
        dims.insert(d as usize, 1);
        self.reshape(dims)
    }

    /// Removes dim `dim`, which must have size 1.
    pub fn squeeze(&self, dim: isize) -> Result<Tensor> {
        let d = self.shape().dim_index("squeeze", dim)?;
        if self.rank() == 0 {
            return Ok(self.clone());
        }
        if self.dims()[d] != 1 {
            return Err(Error::invalid(
                "squeeze",
                format!("dim {dim} of {:?} is not 1", self.shape()),
            ));
        }
        let mut dims = self.dims().to_vec();
        dims.remove(d);
        self.reshape(dims)
    }

    /// A view broadcast to `shape` (stride 0 on stretched dims). Its gradient sums back.
    pub fn broadcast_as(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if &shape == self.shape() {
            return Ok(self.clone());
        }
        let out = self.view_with(self.layout().broadcast_as("broadcast_as", &shape)?);
        let orig = self.shape().clone();
        Ok(track(out, "broadcast_as", &[self], move |g| {
            Ok(vec![Some(g.sum_to_shape(&orig)?)])
        }))
    }

    /// Sums a broadcast tensor back down to `shape` (the gradient of a broadcast).
    pub fn sum_to_shape(&self, shape: &Shape) -> Result<Tensor> {
        if self.shape() == shape {
            return Ok(self.clone());
        }
        let lead = self.rank().checked_sub(shape.rank()).ok_or_else(|| {
            Error::shape(
                "sum_to_shape",
                format!("{:?} has fewer dims than {shape:?}", self.shape()),
            )
        })?;
        let dims: Vec<usize> = (0..self.rank())
            .filter(|&i| i < lead || (shape.dims()[i - lead] == 1 && self.dims()[i] != 1))
            .collect();
        let summed = if dims.is_empty() {
            self.clone()
        } else {
            self.sum_dims(&dims, true)?
        };
        summed.reshape(shape.clone())
    }
}

impl Tensor {
    /// The slice `start..start + len` of dim `dim` (a view).
    pub fn narrow(&self, dim: isize, start: usize, len: usize) -> Result<Tensor> {
        if self.rank() == 0 {
            return Err(Error::invalid(
                "narrow",
                "narrow() cannot be applied to a 0-dim tensor",
            ));
        }
        let d = self.shape().dim_index("narrow", dim)?;
        let size = self.dims()[d];
        if start.checked_add(len).is_none_or(|end| end > size) {
            return Err(Error::invalid(
                "narrow",
                format!(
                    "start {start} + length {len} exceeds dim {d} (size {size}) of {:?}",
                    self.shape()
                ),
            ));
        }
        let mut dims = self.dims().to_vec();
        dims[d] = len;
        let l = self.layout();
        let layout = Layout::new(
            Shape::new(dims),
            l.strides().to_vec(),
            l.offset() + start * l.strides()[d],
        );
        let out = self.view_with(layout);
        let (shape, dtype, device) = (self.shape().clone(), self.dtype(), self.device());
        Ok(track(out, "narrow", &[self], move |g| {
            // Scatter back: zeros before and after the slice, concatenated with g.
            let mut parts = Vec::new();
            let mut before = shape.dims().to_vec();
            before[d] = start;
            let mut after = shape.dims().to_vec();
            after[d] = size - start - len;
            if start > 0 {
                parts.push(Tensor::zeros(before, dtype, device)?);
            }
            parts.push(g.clone());
            if after[d] > 0 {
                parts.push(Tensor::zeros(after, dtype, device)?);
            }
            Ok(vec![Some(Tensor::cat(
                &parts.iter().collect::<Vec<_>>(),
                d as isize,
            )?)])
        }))
    }

    /// Concatenation along `dim`; mixed dtypes promote to the widest (under autocast too:
    /// `cat` is on no autocast list).
    pub fn cat(tensors: &[&Tensor], dim: isize) -> Result<Tensor> {
        let Some(first) = tensors.first() else {
            return Err(Error::invalid("cat", "needs at least one tensor"));
        };
        let dtype = tensors
            .iter()
            .fold(first.dtype(), |a, t| crate::DType::promote(a, t.dtype()));
        let ins = tensors
            .iter()
            .map(|t| t.to_dtype(dtype))
            .collect::<Result<Vec<_>>>()?;
        if let Some(i) = tensors.iter().position(|t| t.rank() == 0) {
            return Err(Error::invalid(
                "cat",
                format!("zero-dimensional tensor (at position {i}) cannot be concatenated"),
            ));
        }
        let d = first.shape().dim_index("cat", dim)?;
        let mut total = 0;
        for t in &ins {
            crate::ops::same_device("cat", &[first, t])?;
            let same = t.rank() == first.rank()
                && t.dims()
                    .iter()
                    .zip(first.dims())
                    .enumerate()
                    .all(|(i, (a, b))| i == d || a == b);
            if !same {
                return Err(Error::shape(
                    "cat",
                    format!(
                        "{:?} and {:?} differ outside dim {d}",
                        first.shape(),
                        t.shape()
                    ),
                ));
            }
            total = usize::checked_add(total, t.dims()[d]).ok_or_else(|| {
                Error::shape("cat", format!("dim {d} sizes overflow at {:?}", t.shape()))
            })?;
        }
        let mut dims = first.dims().to_vec();
        dims[d] = total;
        crate::Shape::new(dims.clone()).checked_elem_count("cat")?;
        let parts: Vec<(crate::StorageRef, Layout)> = ins
            .iter()
            .map(|t| (t.storage(), t.layout().clone()))
            .collect();
        let s = first.backend()?.cat(&parts, d)?;
        let out = Tensor::contiguous_from(s, dims);
        let sizes: Vec<usize> = ins.iter().map(|t| t.dims()[d]).collect();
        let refs: Vec<&Tensor> = ins.iter().collect();
        Ok(track(out, "cat", &refs, move |g| {
            let mut start = 0;
            sizes
                .iter()
                .map(|&n| {
                    let part = g.narrow(d as isize, start, n)?.contiguous()?;
                    start += n;
                    Ok(Some(part))
                })
                .collect()
        }))
    }
}
