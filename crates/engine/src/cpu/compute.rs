//! The CPU backend's compute representation: every float op gathers its inputs into f32
//! (F16, BF16, F32) or f64 (F64) vectors in logical order, computes there, and rounds once
//! into the output dtype.

use super::convert::{narrowed, widened};
use crate::{alloc, CpuStorage, DType, Device, Element, Error, Layout, Result, StorageRef};
use half::{bf16, f16};
use num_traits::Float;
use rayon::prelude::*;
use std::borrow::Cow;
use std::sync::RwLockReadGuard;

/// Element count above which CPU loops go parallel.
pub(crate) const PAR_THRESHOLD: usize = 1 << 15;

/// Values in the compute type of their dtype.
#[derive(Debug, Clone)]
pub(crate) enum Compute {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// Downcasts a storage to host memory.
pub(crate) fn buffer<'a>(op: &'static str, s: &'a StorageRef) -> Result<&'a super::CpuBuffer> {
    s.as_any()
        .downcast_ref::<super::CpuBuffer>()
        .ok_or(Error::DeviceMismatch {
            op,
            lhs: Device::Cpu,
            rhs: s.device(),
        })
}

/// Read access to a storage's host memory.
pub(crate) fn host<'a>(
    op: &'static str,
    s: &'a StorageRef,
) -> Result<RwLockReadGuard<'a, CpuStorage>> {
    Ok(buffer(op, s)?.read())
}

/// Maps `v` element-wise into a new vector (in parallel when long).
pub(crate) fn map_slice<T: Copy + Send + Sync, U: Send>(
    v: &[T],
    f: impl Fn(T) -> U + Sync + Send,
) -> Result<Vec<U>> {
    if v.len() >= PAR_THRESHOLD {
        alloc::par_collect(v.par_iter().map(|&x| f(x)))
    } else {
        alloc::collect(v.len(), v.iter().map(|&x| f(x)))
    }
}

fn gather<T: Copy + Send + Sync, U: bytemuck::Pod + Send + Sync>(
    v: &[T],
    layout: &Layout,
    f: impl Fn(T) -> U + Sync + Send,
) -> Result<Vec<U>> {
    if let Some(start) = layout.contiguous_start() {
        return map_slice(&v[start..start + layout.elem_count()], f);
    }
    let (dims, strides) = (layout.dims(), layout.strides());
    let (Some(&len), Some(&step)) = (dims.last(), strides.last()) else {
        return alloc::collect(layout.elem_count(), layout.offsets().map(|o| f(v[o])));
    };
    if len < 8 || layout.elem_count() == 0 {
        // Short rows: the offset iterator is as good as any.
        return alloc::collect(layout.elem_count(), layout.offsets().map(|o| f(v[o])));
    }
    // Row by row over the innermost dim: a contiguous run (a permuted or sliced view), one
    // value repeated (a broadcast), or a fixed stride; rows in parallel when the view is large.
    let rank = dims.len();
    let rows = Layout::new(
        crate::Shape::new(dims[..rank - 1].to_vec()),
        strides[..rank - 1].to_vec(),
        layout.offset(),
    );
    // (Both fallible: a huge view is an out-of-memory error, not an abort.) Every element is
    // written: `starts` has one entry per row of `len` outputs.
    let mut out = alloc::for_overwrite::<U>(layout.elem_count())?;
    let starts = alloc::collect(rows.elem_count(), rows.offsets())?;
    let row = |(o, &start): (&mut [U], &usize)| match step {
        1 => o
            .iter_mut()
            .zip(&v[start..start + len])
            .for_each(|(o, &x)| *o = f(x)),
        0 => o.fill(f(v[start])),
        _ => o
            .iter_mut()
            .enumerate()
            .for_each(|(i, o)| *o = f(v[start + i * step])),
    };
    if layout.elem_count() >= PAR_THRESHOLD {
        out.par_chunks_mut(len).zip(starts.par_iter()).for_each(row);
    } else {
        out.chunks_mut(len).zip(starts.iter()).for_each(row);
    }
    Ok(out)
}

/// Copies the elements of `layout` in logical order (same dtype).
pub(crate) fn gather_same(s: &CpuStorage, layout: &Layout) -> Result<CpuStorage> {
    Ok(match s {
        CpuStorage::F16(v) => CpuStorage::F16(gather(v, layout, |x| x)?),
        CpuStorage::BF16(v) => CpuStorage::BF16(gather(v, layout, |x| x)?),
        CpuStorage::F32(v) => CpuStorage::F32(gather(v, layout, |x| x)?),
        CpuStorage::F64(v) => CpuStorage::F64(gather(v, layout, |x| x)?),
        CpuStorage::I64(v) => CpuStorage::I64(gather(v, layout, |x| x)?),
    })
}

/// Gathers a float view into its compute type; I64 is an error naming `op`.
pub(crate) fn to_compute(op: &'static str, s: &CpuStorage, layout: &Layout) -> Result<Compute> {
    Ok(match s {
        CpuStorage::F16(v) => Compute::F32(match layout.contiguous_start() {
            Some(start) => widened(&v[start..start + layout.elem_count()])?,
            None => gather(v, layout, f16::to_f32)?,
        }),
        CpuStorage::BF16(v) => Compute::F32(match layout.contiguous_start() {
            Some(start) => widened(&v[start..start + layout.elem_count()])?,
            None => gather(v, layout, bf16::to_f32)?,
        }),
        CpuStorage::F32(v) => Compute::F32(gather(v, layout, |x| x)?),
        CpuStorage::F64(v) => Compute::F64(gather(v, layout, |x| x)?),
        CpuStorage::I64(_) => {
            return Err(Error::dtype(op, "expected a float tensor, got int64"));
        }
    })
}

/// A float view in its compute type: borrowed when the storage already holds the compute
/// type contiguously (F32, F64), else gathered (and widened) into a fresh vector.
#[derive(Debug)]
pub(crate) enum ComputeRef<'a> {
    F32(Cow<'a, [f32]>),
    F64(Cow<'a, [f64]>),
}

impl ComputeRef<'_> {
    /// Hands a gathered copy's block back to the host cache (a borrow has none).
    pub(crate) fn recycle(self) {
        match self {
            ComputeRef::F32(Cow::Owned(v)) => alloc::recycle(v),
            ComputeRef::F64(Cow::Owned(v)) => alloc::recycle(v),
            _ => {}
        }
    }
}

/// [`to_compute`] without the copy where none is needed (see [`ComputeRef`]).
pub(crate) fn to_compute_ref<'a>(
    op: &'static str,
    s: &'a CpuStorage,
    layout: &Layout,
) -> Result<ComputeRef<'a>> {
    let range = layout
        .contiguous_start()
        .map(|start| start..start + layout.elem_count());
    Ok(match (s, range) {
        (CpuStorage::F32(v), Some(r)) => ComputeRef::F32(Cow::Borrowed(&v[r])),
        (CpuStorage::F64(v), Some(r)) => ComputeRef::F64(Cow::Borrowed(&v[r])),
        _ => match to_compute(op, s, layout)? {
            Compute::F32(v) => ComputeRef::F32(Cow::Owned(v)),
            Compute::F64(v) => ComputeRef::F64(Cow::Owned(v)),
        },
    })
}

/// The whole storage as a [`ComputeRef`].
pub(crate) fn all_to_compute_ref<'a>(
    op: &'static str,
    s: &'a CpuStorage,
) -> Result<ComputeRef<'a>> {
    to_compute_ref(op, s, &Layout::contiguous([s.len()]))
}

/// Whole contiguous storage into its compute type.
pub(crate) fn all_to_compute(op: &'static str, s: &CpuStorage) -> Result<Compute> {
    to_compute(op, s, &Layout::contiguous([s.len()]))
}

/// Gathers any view into f64 (used for indices and mixed-dtype paths).
pub(crate) fn to_f64_vec(s: &CpuStorage, layout: &Layout) -> Result<Vec<f64>> {
    match s {
        CpuStorage::F16(v) => gather(v, layout, f16::to_f64),
        CpuStorage::BF16(v) => gather(v, layout, bf16::to_f64),
        CpuStorage::F32(v) => gather(v, layout, |x| x as f64),
        CpuStorage::F64(v) => gather(v, layout, |x| x),
        CpuStorage::I64(v) => gather(v, layout, |x| x as f64),
    }
}

fn round_vec<T: Float + bytemuck::Pod + Send + Sync, E: Element>(
    v: Vec<T>,
    f: impl Fn(T) -> E + Sync + Send,
) -> Result<Vec<E>> {
    let out = map_slice(&v, f);
    alloc::recycle(v);
    out
}

/// Rounds f32 values once into `dtype` (the f32 buffer goes back to the host cache).
pub(crate) fn from_f32(v: Vec<f32>, dtype: DType) -> Result<CpuStorage> {
    Ok(match dtype {
        DType::F16 | DType::BF16 => {
            let half = if dtype == DType::F16 {
                narrowed(&v).map(CpuStorage::F16)
            } else {
                narrowed(&v).map(CpuStorage::BF16)
            };
            alloc::recycle(v);
            half?
        }
        DType::F32 => CpuStorage::F32(v),
        DType::F64 => CpuStorage::F64(round_vec(v, |x| x as f64)?),
        DType::I64 => CpuStorage::I64(round_vec(v, |x| x as i64)?),
    })
}

/// Rounds f64 values once into `dtype`.
pub(crate) fn from_f64(v: Vec<f64>, dtype: DType) -> Result<CpuStorage> {
    Ok(match dtype {
        DType::F16 => CpuStorage::F16(round_vec(v, f16::from_f64)?),
        DType::BF16 => CpuStorage::BF16(round_vec(v, bf16::from_f64)?),
        DType::F32 => CpuStorage::F32(round_vec(v, |x| x as f32)?),
        DType::F64 => CpuStorage::F64(v),
        DType::I64 => CpuStorage::I64(round_vec(v, |x| x as i64)?),
    })
}

impl Compute {
    /// Rounds into `dtype`.
    pub(crate) fn into_storage(self, dtype: DType) -> Result<CpuStorage> {
        match self {
            Compute::F32(v) => from_f32(v, dtype),
            Compute::F64(v) => from_f64(v, dtype),
        }
    }
}

/// Applies `$body` with `$v` bound to the inner vector of a [`Compute`], for both f32 and f64
/// (`$T` names the element type), and wraps the result again.
macro_rules! map_compute {
    ($c:expr, |$v:ident : $T:ident| $body:expr) => {
        match $c {
            $crate::cpu::compute::Compute::F32($v) => {
                #[allow(dead_code)]
                type $T = f32;
                $crate::cpu::compute::Compute::F32($body)
            }
            $crate::cpu::compute::Compute::F64($v) => {
                #[allow(dead_code)]
                type $T = f64;
                $crate::cpu::compute::Compute::F64($body)
            }
        }
    };
}
pub(crate) use map_compute;

/// [`map_compute!`] over a [`ComputeRef`]: `$v` is a `Cow` slice of `$T`; the body returns the
/// output vector, wrapped into a [`Compute`]. A gathered copy goes back to the host cache
/// afterwards (dropped, its block left the cache on every call and the next call page-faulted
/// a fresh one).
macro_rules! map_compute_ref {
    ($c:expr, |$v:ident : $T:ident| $body:expr) => {
        match $c {
            $crate::cpu::compute::ComputeRef::F32($v) => {
                #[allow(dead_code)]
                type $T = f32;
                let out = $body;
                $crate::cpu::compute::ComputeRef::F32($v).recycle();
                $crate::cpu::compute::Compute::F32(out)
            }
            $crate::cpu::compute::ComputeRef::F64($v) => {
                #[allow(dead_code)]
                type $T = f64;
                let out = $body;
                $crate::cpu::compute::ComputeRef::F64($v).recycle();
                $crate::cpu::compute::Compute::F64(out)
            }
        }
    };
}
pub(crate) use map_compute_ref;

/// Converts an f64 scalar to the compute type `T`.
pub(crate) fn scalar<T: Float>(v: f64) -> T {
    T::from(v).unwrap_or_else(T::nan)
}

/// Converts a count to the compute type `T`.
pub(crate) fn count<T: Float>(n: usize) -> T {
    T::from(n).unwrap_or_else(T::nan)
}

/// Errors unless a buffer has the element count the op's geometry implies.
pub(crate) fn check_len(op: &'static str, what: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(Error::shape(
            op,
            format!("{what} has {got} elements, expected {want}"),
        ));
    }
    Ok(())
}

/// A dense 4-D storage of logical `dims` stored in `format`, as row-major NCHW (the same
/// storage when it already is).
pub(crate) fn to_nchw(
    op: &'static str,
    s: &StorageRef,
    dims: [usize; 4],
    format: crate::MemoryFormat,
) -> Result<StorageRef> {
    if format == crate::MemoryFormat::Contiguous {
        return Ok(s.clone());
    }
    let h = host(op, s)?;
    check_len(
        op,
        "a channels-last operand",
        h.len(),
        dims.iter().product(),
    )?;
    let layout = Layout::dense(dims, format).unwrap_or_else(|| Layout::contiguous(dims));
    Ok(super::wrap(gather_same(&h, &layout)?))
}

/// The gather that reorders row-major NCHW data of `dims` into `format`'s storage order, or
/// `None` when `format` is row-major.
pub(crate) fn nchw_to_format_gather(
    dims: [usize; 4],
    format: crate::MemoryFormat,
) -> Option<Layout> {
    match format.dim_order(4) {
        Some(order) if format != crate::MemoryFormat::Contiguous => {
            Some(Layout::contiguous(dims).permute(&order))
        }
        _ => None,
    }
}

/// A row-major NCHW storage of `dims`, stored in `format`.
pub(crate) fn from_nchw(
    s: StorageRef,
    dims: [usize; 4],
    format: crate::MemoryFormat,
) -> Result<StorageRef> {
    match nchw_to_format_gather(dims, format) {
        Some(l) => Ok(super::wrap(gather_same(&*host("from_nchw", &s)?, &l)?)),
        None => Ok(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The row-by-row gather equals the offset iterator on every kind of innermost row —
    /// contiguous (a permutation of outer dims), broadcast (stride 0), strided (a transpose),
    /// short rows — serially and in parallel (views past `PAR_THRESHOLD`).
    #[test]
    fn strided_gather_equals_the_offset_iterator() {
        let v: Vec<f32> = (0..(1 << 17)).map(|i| (i as f32).sin()).collect();
        let layouts = [
            Layout::contiguous([16, 9, 300]).permute(&[1, 0, 2]),
            Layout::new(crate::Shape::new([3, 40, 25]), vec![25, 1, 0], 7),
            Layout::contiguous([64, 1024]).transpose(0, 1),
            Layout::contiguous([5, 7, 3]).permute(&[2, 1, 0]),
            Layout::new(crate::Shape::new([200, 300]), vec![0, 1], 11),
        ];
        for l in &layouts {
            let want: Vec<f32> = l.offsets().map(|o| v[o] * 2.0).collect();
            let got = gather(&v, l, |x| x * 2.0).expect("gather");
            assert_eq!(got, want, "{:?} {:?}", l.dims(), l.strides());
        }
    }
}
