//! Pairwise summation: the one way the CPU backend adds many numbers (sums, means, softmax
//! denominators, losses, batch-norm statistics, pooling windows).
//!
//! **Bound.** With unit roundoff `u` of the accumulation type (2^-24 for f32, which F16, BF16
//! and F32 tensors use; 2^-53 for f64), the sum `s` of `n ≥ 1` terms satisfies
//! `|s − Σx| ≤ ⌈log2 n⌉ · u · Σ|x| · (1 + O(u))`: every term passes through at most
//! `⌈log2 n⌉` rounded additions. (A sequential loop has `n − 1` instead, and in f32 stops
//! growing at 2^24.) The result does not depend on the number of threads.
//!
//! Layout: ranges of at most [`LEAF`] terms are added as a balanced tree in registers (the
//! `buf[i] += buf[i + w]` form vectorizes); longer ranges split at a multiple of `LEAF` near
//! the middle, in parallel above [`PAR_THRESHOLD`] terms.

use super::compute::PAR_THRESHOLD;
use num_traits::Zero;

/// Terms added as one register tree (a power of two).
const LEAF: usize = 16;

/// `Σ_{i<n} term(i)`, pairwise (see the module docs for the bound). `T` is a float, or a
/// small tuple-like type of floats added component-wise (several sums in one pass).
pub(crate) fn pairwise_sum_by<T, F>(n: usize, term: F) -> T
where
    T: Zero + Copy + Send,
    F: Fn(usize) -> T + Sync,
{
    range_sum(0, n, &term)
}

/// `Σ v`, pairwise.
pub(crate) fn pairwise_sum<T: Zero + Copy + Send + Sync>(v: &[T]) -> T {
    pairwise_sum_by(v.len(), |i| v[i])
}

fn range_sum<T, F>(start: usize, len: usize, term: &F) -> T
where
    T: Zero + Copy + Send,
    F: Fn(usize) -> T + Sync,
{
    if len <= LEAF {
        return leaf_sum(start, len, term);
    }
    // Left half: ⌈blocks / 2⌉ whole leaves, so each level halves the leaf count and the
    // depth is ⌈log2 ⌈len/LEAF⌉⌉ + log2 LEAF = ⌈log2 len⌉.
    let left = (len.div_ceil(LEAF)).div_ceil(2) * LEAF;
    let (a, b) = if len >= PAR_THRESHOLD {
        rayon::join(
            || range_sum(start, left, term),
            || range_sum(start + left, len - left, term),
        )
    } else {
        (
            range_sum(start, left, term),
            range_sum(start + left, len - left, term),
        )
    };
    a + b
}

/// Balanced tree over at most `LEAF` terms, zero-padded; adding a zero subtree is exact, so a
/// term sees `⌈log2 len⌉` roundings at most.
fn leaf_sum<T: Zero + Copy, F: Fn(usize) -> T>(start: usize, len: usize, term: &F) -> T {
    let mut buf = [T::zero(); LEAF];
    for (i, b) in buf.iter_mut().enumerate().take(len) {
        *b = term(start + i);
    }
    let mut w = LEAF / 2;
    while w > 0 {
        for i in 0..w {
            buf[i] = buf[i] + buf[i + w];
        }
        w /= 2;
    }
    buf[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ones_keep_counting_past_two_to_the_24() {
        let n = (1usize << 24) + 1001;
        assert_eq!(pairwise_sum_by(n, |_| 1.0f32), n as f32);
    }

    #[test]
    fn small_ranges_are_exact_sums_of_integers() {
        for n in 0..100usize {
            let want = (n * n.saturating_sub(1) / 2) as f32;
            assert_eq!(pairwise_sum_by(n, |i| i as f32), want, "n = {n}");
        }
    }

    #[test]
    fn non_finite_terms_propagate() {
        let v = [1.0f32, f32::INFINITY, 2.0];
        assert_eq!(pairwise_sum(&v), f32::INFINITY);
        let w = [1.0f32, f32::INFINITY, f32::NEG_INFINITY];
        assert!(pairwise_sum(&w).is_nan());
    }
}
