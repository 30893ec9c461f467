//! Fallible host allocation. Every host buffer whose size follows from a caller's shapes is
//! reserved with `try_reserve_exact` here, so a request the allocator refuses (larger than
//! memory) is `Err(OutOfMemory { device: Cpu, .. })` naming the bytes, never a process abort
//! (`vec![..; n]` and `collect()` abort on allocation failure).
//!
//! Small bookkeeping vectors (dims, strides, per-tensor lists) still use the infallible
//! constructors: their sizes are bounded by ranks and tensor counts, not element counts.

use crate::{host_cache, Device, Error, Result};
use rayon::prelude::*;

/// The error for a refused request of `n` elements of `T`.
pub(crate) fn out_of_memory<T>(n: usize) -> Error {
    Error::OutOfMemory {
        device: Device::Cpu,
        requested: n.saturating_mul(std::mem::size_of::<T>()),
    }
}

/// An empty vector with room for `n` elements, or `Err(OutOfMemory)`. Large requests get
/// their whole size class ([`host_cache`]), from a cached block when there is one.
pub(crate) fn with_capacity<T>(n: usize) -> Result<Vec<T>> {
    if let Some((v, _)) = host_cache::take::<T>(n) {
        return Ok(v);
    }
    let mut v = Vec::new();
    v.try_reserve_exact(host_cache::capacity_for::<T>(n))
        .map_err(|_| out_of_memory::<T>(n))?;
    Ok(v)
}

/// Hands a scratch vector's block back to the host cache (or frees it).
pub(crate) fn recycle<T: bytemuck::Pod>(v: Vec<T>) {
    host_cache::give(v)
}

/// `n` copies of `value` (`vec![value; n]` without the abort). An all-zero-bits `value`
/// (the usual case: fresh outputs and scratch) takes zeroed memory from the allocator instead
/// of writing it: large blocks come from the OS already zero, so there is no serial memset
/// and the pages are faulted in by whichever thread first writes them.
pub(crate) fn filled<T: bytemuck::Pod>(n: usize, value: T) -> Result<Vec<T>> {
    if bytemuck::bytes_of(&value).iter().all(|&b| b == 0) {
        return zeroed(n);
    }
    let mut v = with_capacity(n)?;
    v.resize(n, value);
    Ok(v)
}

/// `n` all-zero-bits elements: a cached block zeroed in parallel, else `alloc_zeroed`
/// (`calloc`: fresh pages from the OS are already zero).
fn zeroed<T: bytemuck::Zeroable>(n: usize) -> Result<Vec<T>> {
    use std::alloc::{alloc_zeroed, Layout};
    if let Some((mut v, _)) = host_cache::take::<T>(n) {
        zero_spare(&mut v, 0..n);
        // SAFETY: the first `n` elements were just zeroed, a valid `T` (`Zeroable`).
        unsafe { v.set_len(n) };
        return Ok(v);
    }
    let cap = host_cache::capacity_for::<T>(n);
    let layout = Layout::array::<T>(cap).map_err(|_| out_of_memory::<T>(n))?;
    if layout.size() == 0 {
        let mut v = Vec::new();
        // Zero-sized elements, or `n == 0`: no allocation.
        v.resize_with(n, T::zeroed);
        return Ok(v);
    }
    // SAFETY: `layout` has a non-zero size.
    let ptr = unsafe { alloc_zeroed(layout) } as *mut T;
    if ptr.is_null() {
        return Err(out_of_memory::<T>(n));
    }
    // SAFETY: `ptr` was allocated by the global allocator with `Layout::array::<T>(cap)` (the
    // layout `Vec<T>` uses for capacity `cap`), and all-zero bits are a valid `T` (`Zeroable`),
    // so the first `n ≤ cap` elements are initialized.
    Ok(unsafe { Vec::from_raw_parts(ptr, n, cap) })
}

/// Writes zero bytes over elements `range` of `v`'s spare capacity (in parallel when large).
fn zero_spare<T: bytemuck::Zeroable>(v: &mut Vec<T>, range: std::ops::Range<usize>) {
    let spare = &mut v.spare_capacity_mut()[range];
    let len = std::mem::size_of_val(spare);
    // SAFETY: the same memory as `spare`, as bytes that may be uninitialized.
    let bytes = unsafe {
        std::slice::from_raw_parts_mut(spare.as_mut_ptr().cast::<std::mem::MaybeUninit<u8>>(), len)
    };
    let zero = |c: &mut [std::mem::MaybeUninit<u8>]| c.fill(std::mem::MaybeUninit::new(0));
    if len >= 1 << 20 {
        bytes.par_chunks_mut(1 << 16).for_each(zero);
    } else {
        zero(bytes);
    }
}

/// `n` elements of unspecified values, for a buffer the caller overwrites completely (an op's
/// output, a GEMM's destination, im2col columns): a cached block keeps what its previous user
/// left (no memset; any bit pattern is a value of a `Pod` type), a fresh one is zero.
pub(crate) fn for_overwrite<T: bytemuck::Pod>(n: usize) -> Result<Vec<T>> {
    if let Some((mut v, init)) = host_cache::take::<T>(n) {
        if init < n {
            zero_spare(&mut v, init..n);
        }
        // SAFETY: elements `..init` hold the previous user's values (initialized, and valid
        // for `Pod`), `init..n` were just zeroed.
        unsafe { v.set_len(n) };
        return Ok(v);
    }
    zeroed(n)
}

/// The first `n` items of `items` (which yields at least that many: an iterator over a layout or
/// a slice of known length), in one reserved allocation.
pub(crate) fn collect<T>(n: usize, items: impl Iterator<Item = T>) -> Result<Vec<T>> {
    let mut v = with_capacity(n)?;
    v.extend(items.take(n));
    Ok(v)
}

/// A parallel iterator's items in order, in one reserved allocation.
pub(crate) fn par_collect<T: Send>(
    items: impl IndexedParallelIterator<Item = T>,
) -> Result<Vec<T>> {
    let mut v = with_capacity(items.len())?;
    // `collect_into_vec` reserves `len` more than it keeps (0 after its truncate): no reallocation.
    items.collect_into_vec(&mut v);
    Ok(v)
}

/// A copy of `src` (`to_vec` without the abort).
pub(crate) fn copy_of<T: Clone>(src: &[T]) -> Result<Vec<T>> {
    let mut v = with_capacity(src.len())?;
    v.extend_from_slice(src);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_request_is_an_error_naming_its_bytes() {
        let n = usize::MAX / 16;
        match filled(n, 0f64) {
            Err(Error::OutOfMemory { device, requested }) => {
                assert_eq!(device, Device::Cpu);
                assert_eq!(requested, n * 8);
            }
            other => panic!("expected OutOfMemory, got {:?}", other.map(|v| v.len())),
        }
        assert!(matches!(
            collect(n, std::iter::repeat(1u8)),
            Err(Error::OutOfMemory { .. })
        ));
    }

    #[test]
    fn granted_requests_hold_exactly_what_was_asked() -> Result<()> {
        assert_eq!(filled(3, 7i64)?, vec![7, 7, 7]);
        assert_eq!(collect(2, [1, 2, 3].into_iter())?, vec![1, 2]);
        let v = par_collect((0..100_000u32).into_par_iter().map(|x| x * 2))?;
        assert_eq!(v.len(), 100_000);
        assert_eq!(v[99_999], 199_998);
        assert_eq!(copy_of(&[1.5f32, 2.5])?, vec![1.5, 2.5]);
        // Zero bits come from `alloc_zeroed`; -0.0 is not zero bits and is written.
        let z = filled(3 << 20, 0f32)?;
        assert!(z.len() == 3 << 20 && z.iter().all(|v| v.to_bits() == 0));
        let nz = filled(5, -0f64)?;
        assert!(nz.iter().all(|v| v.to_bits() == (-0f64).to_bits()));
        assert!(filled(0, 0u8)?.is_empty());
        Ok(())
    }
}
