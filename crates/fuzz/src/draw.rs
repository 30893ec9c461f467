//! Drawing fuzz values from raw bytes with `arbitrary`: mostly the small, valid values that
//! exercise real code paths, sometimes the edges (0, huge, negative, NaN, out of range).
//!
//! "Huge" sizes are chosen so that any product with another non-zero dim exceeds what a host
//! can hold (≥ 2^40 elements): a request either fails cleanly or is empty, never a slow but
//! legal multi-gigabyte allocation.

use arbitrary::Unstructured;
use hemi::{DType, Device};

/// A source of fuzz values over one input's bytes (exhausted bytes read as zeros).
#[derive(Debug)]
pub struct Draw<'a>(Unstructured<'a>);

/// Sizes beyond any host's memory when multiplied by anything but 0.
pub const HUGE: [usize; 4] = [1 << 40, 1 << 62, usize::MAX / 2, usize::MAX];

impl<'a> Draw<'a> {
    /// Values from `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Draw(Unstructured::new(bytes))
    }

    /// A byte (0 once the input is used up).
    pub fn byte(&mut self) -> u8 {
        self.0.arbitrary().unwrap_or(0)
    }

    /// True with probability about `percent`%.
    pub fn chance(&mut self, percent: u8) -> bool {
        (self.byte() as u32 * 100) < percent as u32 * 256
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        self.0.int_in_range(0..=n.saturating_sub(1)).unwrap_or(0)
    }

    /// One of `items` (non-empty).
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    /// A dimension size: small (0..=9, 16, 17), rarely huge.
    pub fn size(&mut self) -> usize {
        if self.chance(2) {
            return self.pick(&HUGE);
        }
        self.pick(&[0, 1, 1, 2, 2, 3, 3, 4, 5, 6, 7, 8, 9, 16, 17])
    }

    /// A small parameter (stride, padding, kernel, groups...): 0..=4 mostly, rarely huge.
    pub fn param(&mut self) -> usize {
        if self.chance(2) {
            return self.pick(&HUGE);
        }
        self.pick(&[0, 1, 1, 1, 2, 2, 3, 4])
    }

    /// A shape of rank 0..=4 with at most `limit` elements unless it holds a huge dim.
    pub fn shape(&mut self, limit: usize) -> Vec<usize> {
        let rank = self.pick(&[0, 1, 1, 2, 2, 3, 4, 4]);
        self.shape_of_rank(rank, limit)
    }

    /// A shape of `rank` (see [`Draw::shape`]).
    pub fn shape_of_rank(&mut self, rank: usize, limit: usize) -> Vec<usize> {
        let mut dims: Vec<usize> = (0..rank).map(|_| self.size()).collect();
        let huge = dims.iter().any(|d| HUGE.contains(d));
        if !huge {
            // Shrink the largest dim until the tensor is small enough to compute on quickly.
            while dims.iter().product::<usize>() > limit {
                if let Some(m) = dims.iter_mut().max() {
                    *m /= 2;
                }
            }
        }
        dims
    }

    /// A dim index for a tensor of `rank`: valid (either sign) mostly, sometimes out of range.
    pub fn dim(&mut self, rank: usize) -> isize {
        let r = rank.max(1) as isize;
        if self.chance(8) {
            return self.pick(&[r, -r - 1, isize::MAX, isize::MIN, 7]);
        }
        let d = self.below(r as usize) as isize;
        if self.chance(30) {
            d - r
        } else {
            d
        }
    }

    /// A float parameter: ordinary values mostly, sometimes 0, negative, huge, NaN or inf.
    pub fn float(&mut self) -> f64 {
        if self.chance(12) {
            return self.pick(&[
                0.0,
                -1.0,
                -0.0,
                1e300,
                -1e300,
                f64::NAN,
                f64::INFINITY,
                f64::NEG_INFINITY,
                65504.0,
                1e-45,
            ]);
        }
        (self.byte() as f64 - 100.0) / 37.0
    }

    /// A probability-like parameter in [0, 1] mostly, sometimes outside or NaN.
    pub fn unit(&mut self) -> f64 {
        if self.chance(10) {
            return self.pick(&[-0.5, 1.0, 1.5, f64::NAN, f64::INFINITY]);
        }
        self.byte() as f64 / 255.0
    }

    /// Any dtype, floats more often.
    pub fn dtype(&mut self) -> DType {
        self.pick(&[
            DType::F32,
            DType::F32,
            DType::F16,
            DType::BF16,
            DType::F64,
            DType::I64,
        ])
    }

    /// One of `devices` (non-empty).
    pub fn device(&mut self, devices: &[Device]) -> Device {
        self.pick(devices)
    }

    /// A value index into a pool of `len` tensors (`len` > 0).
    pub fn slot(&mut self, len: usize) -> usize {
        self.below(len)
    }

    /// Whether any input bytes are left.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
