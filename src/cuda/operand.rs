//! Typed device operands of the crate-private launch wrappers (DESIGN.md, "Safety boundary").
//!
//! A [`Span`] is `len` contiguous elements of a [`CudaBuffer`] from element `offset`; a [`View`]
//! is a strided view of one. Both come only from checking constructors, so every element they
//! name lies inside a live allocation, and they borrow the buffer, so it outlives the launch.
//! A launch wrapper takes these instead of raw device addresses, checks that their lengths,
//! dtypes and devices agree with its launch geometry ([`expect_len`], [`expect_dtype`],
//! [`same_device`]), and can then justify its one `unsafe` launch from its own arguments: no
//! caller one level up has to have checked anything.

use super::driver::{DevicePtr, Driver};
use super::storage::CudaBuffer;
use hemi_engine::backend::check_layout;
use hemi_engine::{BackendStorage, DType, Device, Error, Layout, Result, Shape};

/// `len` contiguous elements of a buffer from element `offset` (checked to fit).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span<'a> {
    buf: &'a CudaBuffer,
    offset: usize,
    len: usize,
}

impl<'a> Span<'a> {
    /// The whole buffer.
    pub fn all(buf: &'a CudaBuffer) -> Self {
        Span {
            buf,
            offset: 0,
            len: buf.len(),
        }
    }

    /// Elements `offset .. offset + len` of `buf`; an error naming `op` unless they fit.
    pub fn new(op: &'static str, buf: &'a CudaBuffer, offset: usize, len: usize) -> Result<Self> {
        if offset.checked_add(len).is_none_or(|end| end > buf.len()) {
            return Err(Error::shape(
                op,
                format!(
                    "elements {offset}..+{len} of a {}-element buffer",
                    buf.len()
                ),
            ));
        }
        Ok(Span { buf, offset, len })
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        self.buf.dtype()
    }

    /// Device of the buffer.
    pub fn device(&self) -> Device {
        self.buf.device()
    }

    /// The driver of the buffer's device.
    pub fn driver(&self) -> &dyn Driver {
        self.buf.driver().as_ref()
    }

    /// Device address of the first element.
    pub fn ptr(&self) -> DevicePtr {
        self.buf.ptr() + (self.offset * self.dtype().size_in_bytes()) as u64
    }

    /// The span as a contiguous 1-D view.
    pub fn view(&self) -> View<'a> {
        View {
            buf: self.buf,
            layout: Layout::new(Shape::new([self.len]), vec![1], self.offset),
        }
    }
}

/// A strided view of a buffer whose every element lies inside it (checked).
#[derive(Debug, Clone)]
pub(crate) struct View<'a> {
    buf: &'a CudaBuffer,
    layout: Layout,
}

impl<'a> View<'a> {
    /// The view `layout` of `buf`; an error naming `op` unless every element fits.
    pub fn new(op: &'static str, buf: &'a CudaBuffer, layout: &Layout) -> Result<Self> {
        check_layout(op, layout, buf.len())?;
        Ok(View {
            buf,
            layout: layout.clone(),
        })
    }

    /// The same elements under a permutation of the dims (still inside the buffer).
    pub fn permute(&self, perm: &[usize]) -> Self {
        View {
            buf: self.buf,
            layout: self.layout.permute(perm),
        }
    }

    /// The layout (offset and strides in elements of the buffer).
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Number of elements.
    pub fn elem_count(&self) -> usize {
        self.layout.elem_count()
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        self.buf.dtype()
    }

    /// Device of the buffer.
    pub fn device(&self) -> Device {
        self.buf.device()
    }

    /// The driver of the buffer's device.
    pub fn driver(&self) -> &dyn Driver {
        self.buf.driver().as_ref()
    }

    /// Device address of the buffer's element 0 (the layout's offset is not applied).
    pub fn base(&self) -> DevicePtr {
        self.buf.ptr()
    }

    /// Device address of the view's first element (offset applied).
    pub fn start(&self) -> DevicePtr {
        self.buf.ptr() + (self.layout.offset() * self.dtype().size_in_bytes()) as u64
    }
}

/// Errors unless `what` of `op` holds `want` elements.
pub(crate) fn expect_len(op: &'static str, what: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(Error::shape(
            op,
            format!("{what} has {got} elements where the launch needs {want}"),
        ));
    }
    Ok(())
}

/// Errors unless `what` of `op` has dtype `want`.
pub(crate) fn expect_dtype(op: &'static str, what: &str, got: DType, want: DType) -> Result<()> {
    if got != want {
        return Err(Error::DTypeMismatch {
            op,
            msg: format!("{what} is {got}, the kernel takes {want}"),
        });
    }
    Ok(())
}

/// Errors unless every operand lives on `device`.
pub(crate) fn same_device(
    op: &'static str,
    device: Device,
    others: impl IntoIterator<Item = Device>,
) -> Result<()> {
    for d in others {
        if d != device {
            return Err(Error::DeviceMismatch {
                op,
                lhs: device,
                rhs: d,
            });
        }
    }
    Ok(())
}
