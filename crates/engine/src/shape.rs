//! Shapes, strided layouts and broadcasting rules.

use crate::{Error, Result};
use std::fmt;

/// The dimensions of a tensor, outermost first. A shape with no dims is a scalar (1 element).
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(Vec<usize>);

impl Shape {
    /// Wraps a list of dims.
    pub fn new(dims: impl Into<Vec<usize>>) -> Self {
        Shape(dims.into())
    }
    /// The dims.
    pub fn dims(&self) -> &[usize] {
        &self.0
    }
    /// Number of dims.
    pub fn rank(&self) -> usize {
        self.0.len()
    }
    /// Number of elements (1 for a scalar).
    pub fn elem_count(&self) -> usize {
        self.0.iter().product()
    }
    /// The number of elements, or an error naming `op` when the product of the non-zero dims
    /// exceeds `isize::MAX` (the most elements any buffer can index) — where
    /// [`Shape::elem_count`] would wrap. Zero dims are left out of the check so that, for
    /// every accepted shape, *every* partial product of its dims (the row counts, plane sizes
    /// and strides ops compute) fits too: `[0, 2^62, 4]` is refused although it holds no
    /// element.
    pub fn checked_elem_count(&self, op: &'static str) -> Result<usize> {
        let nonzero = self
            .0
            .iter()
            .filter(|&&d| d != 0)
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= isize::MAX as usize);
        match nonzero {
            Some(_) if self.0.contains(&0) => Ok(0),
            Some(n) => Ok(n),
            None => Err(Error::shape(
                op,
                format!("shape {self:?} has more elements than a buffer can hold"),
            )),
        }
    }
    /// Row-major strides of a contiguous tensor of this shape. A shape with no elements may
    /// have dims whose product overflows (`[0, 2^62, 4]`): its strides saturate at
    /// `usize::MAX`, which no element is ever addressed with.
    pub fn contiguous_strides(&self) -> Vec<usize> {
        let mut strides = vec![0; self.0.len()];
        let mut acc = 1usize;
        for (s, d) in strides.iter_mut().zip(&self.0).rev() {
            *s = acc;
            acc = acc.saturating_mul(*d);
        }
        strides
    }
    /// Resolves a possibly negative dim index (`-1` = last) against this rank.
    pub fn dim_index(&self, op: &'static str, dim: isize) -> Result<usize> {
        // A 0-d tensor answers to dims 0 and -1, as in PyTorch.
        let rank = (self.rank() as isize).max(1);
        let d = if dim < 0 { dim + rank } else { dim };
        if d < 0 || d >= rank {
            return Err(Error::invalid(
                op,
                format!("dim {dim} out of range for shape {self:?}"),
            ));
        }
        Ok(d as usize)
    }
    /// The broadcast of two shapes under NumPy/PyTorch rules (align right; 1 stretches).
    pub fn broadcast(op: &'static str, a: &Shape, b: &Shape) -> Result<Shape> {
        let rank = a.rank().max(b.rank());
        let mut out = vec![0; rank];
        for (i, o) in out.iter_mut().enumerate() {
            let da = dim_from_right(a, rank - 1 - i);
            let db = dim_from_right(b, rank - 1 - i);
            *o = match (da, db) {
                (x, y) if x == y => x,
                (1, y) => y,
                (x, 1) => x,
                _ => {
                    return Err(Error::shape(
                        op,
                        format!("shapes {a:?} and {b:?} cannot be broadcast together"),
                    ))
                }
            };
        }
        let out = Shape(out);
        out.checked_elem_count(op)?;
        Ok(out)
    }
}

fn dim_from_right(s: &Shape, from_right: usize) -> usize {
    if from_right < s.rank() {
        s.0[s.rank() - 1 - from_right]
    } else {
        1
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl From<&[usize]> for Shape {
    fn from(d: &[usize]) -> Self {
        Shape(d.to_vec())
    }
}
impl From<Vec<usize>> for Shape {
    fn from(d: Vec<usize>) -> Self {
        Shape(d)
    }
}
impl<const N: usize> From<[usize; N]> for Shape {
    fn from(d: [usize; N]) -> Self {
        Shape(d.to_vec())
    }
}
impl From<&Shape> for Shape {
    fn from(s: &Shape) -> Self {
        s.clone()
    }
}
impl From<()> for Shape {
    fn from(_: ()) -> Self {
        Shape(vec![])
    }
}

/// The order in which a 4-D `[N, C, H, W]` tensor's elements lie in memory, as PyTorch's
/// `torch.memory_format`: the shape (and so all user code) is the same, only the strides
/// differ. `ChannelsLast` stores NHWC (strides `[H·W·C, 1, W·C, C]`), the layout Tensor-Core
/// convolutions read; 4-D filters `[K, C, R, S]` in it are stored KRSC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MemoryFormat {
    /// Row-major (NCHW for 4-D tensors): `torch.contiguous_format`.
    #[default]
    Contiguous,
    /// NHWC storage of an NCHW-shaped 4-D tensor: `torch.channels_last`.
    ChannelsLast,
}

impl MemoryFormat {
    /// The dim order from outermost to innermost in memory for a tensor of `rank` dims
    /// (`None` for `ChannelsLast` on a rank other than 4).
    pub fn dim_order(self, rank: usize) -> Option<Vec<usize>> {
        match self {
            MemoryFormat::Contiguous => Some((0..rank).collect()),
            MemoryFormat::ChannelsLast if rank == 4 => Some(vec![0, 2, 3, 1]),
            MemoryFormat::ChannelsLast => None,
        }
    }
}

/// How a tensor's logical elements map onto its storage: shape, element strides and offset.
/// Strides are non-negative; a stride of 0 broadcasts a dim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    shape: Shape,
    strides: Vec<usize>,
    offset: usize,
}

impl Layout {
    /// The row-major contiguous layout of `shape` at offset 0.
    pub fn contiguous(shape: impl Into<Shape>) -> Self {
        let shape = shape.into();
        let strides = shape.contiguous_strides();
        Layout {
            shape,
            strides,
            offset: 0,
        }
    }
    /// A layout from its parts (the caller guarantees it stays inside its storage).
    pub fn new(shape: Shape, strides: Vec<usize>, offset: usize) -> Self {
        Layout {
            shape,
            strides,
            offset,
        }
    }
    /// The logical shape.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }
    /// The dims of the shape.
    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }
    /// Element strides, one per dim.
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }
    /// Offset of the first element in the storage.
    pub fn offset(&self) -> usize {
        self.offset
    }
    /// Number of logical elements.
    pub fn elem_count(&self) -> usize {
        self.shape.elem_count()
    }
    /// Storage elements from the first addressed one to the last, inclusive (0 when empty):
    /// the elements are all within `offset..offset + span`.
    pub(crate) fn span(&self) -> usize {
        if self.elem_count() == 0 {
            return 0;
        }
        let last: usize = self
            .dims()
            .iter()
            .zip(&self.strides)
            .map(|(&d, &s)| (d - 1) * s)
            .sum();
        last + 1
    }
    /// True when the elements are row-major and dense (dims of size 1 may have any stride).
    pub fn is_contiguous(&self) -> bool {
        let mut acc = 1usize;
        for (&d, &s) in self.dims().iter().zip(&self.strides).rev() {
            if d != 1 && s != acc {
                return false;
            }
            acc = acc.saturating_mul(d);
        }
        true
    }
    /// The dense layout of `shape` in `format` at offset 0 (`None` when the format does not
    /// apply to the rank: channels-last needs 4 dims).
    pub fn dense(shape: impl Into<Shape>, format: MemoryFormat) -> Option<Self> {
        let shape = shape.into();
        let order = format.dim_order(shape.rank())?;
        let mut strides = vec![0; shape.rank()];
        let mut acc = 1usize;
        for &d in order.iter().rev() {
            strides[d] = acc;
            acc = acc.saturating_mul(shape.dims()[d]);
        }
        Some(Layout::new(shape, strides, 0))
    }
    /// True when the elements lie densely in `format`'s dim order (dims of size 1 may have any
    /// stride, as in [`Layout::is_contiguous`]); a 4-D tensor with `C = 1` or `H = W = 1` is
    /// in both formats at once, as in PyTorch.
    pub fn is_contiguous_for(&self, format: MemoryFormat) -> bool {
        let Some(order) = format.dim_order(self.shape.rank()) else {
            return false;
        };
        let mut acc = 1usize;
        for &d in order.iter().rev() {
            let n = self.dims()[d];
            if n != 1 && self.strides[d] != acc {
                return false;
            }
            acc = acc.saturating_mul(n);
        }
        true
    }
    /// The format this dense layout is in, preferring `Contiguous` when both apply; `None` for
    /// a layout that is in neither (a strided view).
    pub fn memory_format(&self) -> Option<MemoryFormat> {
        [MemoryFormat::Contiguous, MemoryFormat::ChannelsLast]
            .into_iter()
            .find(|&f| self.is_contiguous_for(f))
    }
    /// Swaps two dims (a view).
    pub fn transpose(&self, a: usize, b: usize) -> Layout {
        let mut dims = self.dims().to_vec();
        let mut strides = self.strides.clone();
        dims.swap(a, b);
        strides.swap(a, b);
        Layout::new(Shape(dims), strides, self.offset)
    }
    /// Reorders dims: output dim `i` is input dim `perm[i]` (a view). `perm` must be valid.
    pub fn permute(&self, perm: &[usize]) -> Layout {
        let dims = perm.iter().map(|&p| self.dims()[p]).collect::<Vec<_>>();
        let strides = perm.iter().map(|&p| self.strides[p]).collect();
        Layout::new(Shape(dims), strides, self.offset)
    }
    /// Views this layout as the broadcast shape `to` (stride 0 on stretched dims).
    pub fn broadcast_as(&self, op: &'static str, to: &Shape) -> Result<Layout> {
        to.checked_elem_count(op)?;
        let rank = to.rank();
        if self.shape.rank() > rank {
            return Err(Error::shape(
                op,
                format!("cannot broadcast {:?} to {:?}", self.shape, to),
            ));
        }
        let lead = rank - self.shape.rank();
        let mut strides = vec![0; rank];
        for (i, stride) in strides.iter_mut().enumerate().skip(lead) {
            let d = self.dims()[i - lead];
            if d == to.dims()[i] {
                *stride = self.strides[i - lead];
            } else if d != 1 {
                return Err(Error::shape(
                    op,
                    format!("cannot broadcast {:?} to {:?}", self.shape, to),
                ));
            }
        }
        Ok(Layout::new(to.clone(), strides, self.offset))
    }
    /// Storage offsets of every logical element, in row-major logical order.
    pub fn offsets(&self) -> StridedOffsets<'_> {
        StridedOffsets::new(self)
    }
    /// `Some(start)` when the elements are contiguous, so they are `start..start + n`.
    pub fn contiguous_start(&self) -> Option<usize> {
        self.is_contiguous().then_some(self.offset)
    }
}

/// Iterator over the storage offsets of a [`Layout`] in logical (row-major) order.
#[derive(Debug)]
pub struct StridedOffsets<'a> {
    layout: &'a Layout,
    index: Vec<usize>,
    next: Option<usize>,
    remaining: usize,
}

impl<'a> StridedOffsets<'a> {
    fn new(layout: &'a Layout) -> Self {
        let n = layout.elem_count();
        StridedOffsets {
            layout,
            index: vec![0; layout.shape.rank()],
            next: (n > 0).then_some(layout.offset),
            remaining: n,
        }
    }
}

impl Iterator for StridedOffsets<'_> {
    type Item = usize;
    fn next(&mut self) -> Option<usize> {
        let cur = self.next?;
        self.remaining -= 1;
        if self.remaining == 0 {
            self.next = None;
            return Some(cur);
        }
        let mut off = cur;
        for d in (0..self.index.len()).rev() {
            let size = self.layout.dims()[d];
            let stride = self.layout.strides[d];
            if self.index[d] + 1 < size {
                self.index[d] += 1;
                off += stride;
                break;
            }
            off -= stride * self.index[d];
            self.index[d] = 0;
        }
        self.next = Some(off);
        Some(cur)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for StridedOffsets<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_of_transposed_layout() {
        let l = Layout::contiguous([2, 3]).transpose(0, 1);
        assert_eq!(l.offsets().collect::<Vec<_>>(), vec![0, 3, 1, 4, 2, 5]);
        assert!(!l.is_contiguous());
    }

    #[test]
    fn broadcast_rules() {
        let s = Shape::broadcast("t", &Shape::new([3, 1]), &Shape::new([4])).unwrap_or_default();
        assert_eq!(s.dims(), &[3, 4]);
        assert!(Shape::broadcast("t", &Shape::new([3]), &Shape::new([4])).is_err());
    }
}
