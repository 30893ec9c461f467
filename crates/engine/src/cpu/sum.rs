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

/// Terms per block of [`blocked_sums`].
pub(crate) const BLOCK: usize = 128;

/// `K` f64 sums of `n` terms each, computed from slices block by block: `fill(range, bufs)`
/// writes the terms of `range` (at most [`BLOCK`] long, starting at a multiple of it) into
/// `bufs[k][..range.len()]`. Inside a block the terms go to 8 lanes (at most 16 additions
/// each) and a 3-level tree; blocks combine pairwise (a binary counter: a term's block sum
/// passes through at most `⌈log2 ⌈n/128⌉⌉` additions) — so a sum's error is at most
/// `(19 + ⌈log2 ⌈n/128⌉⌉)·2^-53·Σ|term|`, growing like log n, while the block loops vectorize
/// (the per-term closure of [`pairwise_sum_by`] does not).
///
/// A loop, not a recursion, and inlined: a caller compiled for wider vectors
/// ([`super::convert::with_wide_vectors`]) gets them in `fill` and the lane sums too.
#[inline(always)]
pub(crate) fn blocked_sums<const K: usize>(
    n: usize,
    fill: &impl Fn(std::ops::Range<usize>, &mut [[f64; BLOCK]; K]),
) -> [f64; K] {
    // (Plain loops over `k`, not `array::from_fn` or `map`: those stay calls, compiled for
    // the baseline.)
    let sums = |bufs: &[[f64; BLOCK]; K], len: usize| {
        let mut out = [0f64; K];
        for k in 0..K {
            out[k] = lanes_sum(&bufs[k][..len]);
        }
        out
    };
    let add = |a: &[f64; K], b: &[f64; K]| {
        let mut out = [0f64; K];
        for k in 0..K {
            out[k] = a[k] + b[k];
        }
        out
    };
    let mut bufs = [[0f64; BLOCK]; K];
    if n <= BLOCK {
        fill(0..n, &mut bufs);
        return sums(&bufs, n);
    }
    // Pending subtree sums, left to right: after `b` blocks the stack holds one sum per set
    // bit of `b` (2^level blocks each, levels decreasing), so it never exceeds 64 entries.
    let mut stack = [[0f64; K]; usize::BITS as usize];
    let (mut depth, mut blocks) = (0usize, 0usize);
    for start in (0..n).step_by(BLOCK) {
        let len = BLOCK.min(n - start);
        fill(start..start + len, &mut bufs);
        let mut cur = sums(&bufs, len);
        blocks += 1;
        // Each trailing zero of the block count closes a pair of equal subtrees.
        for _ in 0..blocks.trailing_zeros() {
            depth -= 1;
            cur = add(&stack[depth], &cur);
        }
        stack[depth] = cur;
        depth += 1;
    }
    // The leftover subtrees, right to left: a term in the i-th (2^j_i blocks, j_i ≤ j_1 − i + 1)
    // gains i additions here, within ⌈log2 blocks⌉ in all.
    let mut total = stack[depth - 1];
    for sub in stack[..depth - 1].iter().rev() {
        total = add(sub, &total);
    }
    total
}

/// At most [`BLOCK`] terms in 8 lanes, then a tree over the lanes.
#[inline(always)]
fn lanes_sum(v: &[f64]) -> f64 {
    let mut acc = [0f64; 8];
    // (Whole chunks as fixed-size arrays: one vector add each. The same additions, in the
    // same order, as a loop over `chunks(8)`.)
    let mut chunks = v.chunks_exact(8);
    for c in &mut chunks {
        let c: &[f64; 8] = c.try_into().expect("chunks_exact(8)");
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    for (a, &x) in acc.iter_mut().zip(chunks.remainder()) {
        *a += x;
    }
    let q = [
        acc[0] + acc[4],
        acc[1] + acc[5],
        acc[2] + acc[6],
        acc[3] + acc[7],
    ];
    (q[0] + q[2]) + (q[1] + q[3])
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
    fn blocked_sums_are_within_their_bound() {
        for n in [0usize, 1, 7, 128, 129, 1000, 12_544, 100_003] {
            let x = |i: usize| ((i * 2_654_435_761) % 1_000_003) as f64 / 7.0 - 60_000.0;
            let [s, sq] = blocked_sums(n, &|r, bufs: &mut [[f64; BLOCK]; 2]| {
                for (j, i) in r.enumerate() {
                    bufs[0][j] = x(i);
                    bufs[1][j] = x(i) * x(i);
                }
            });
            let (mut want, mut mag, mut want2) = (0f64, 0f64, 0f64);
            // Exact enough: the terms are multiples of 1/7 below 2^20, summed in i128 units.
            let units: i128 = (0..n)
                .map(|i| ((i * 2_654_435_761) % 1_000_003) as i128 - 420_000)
                .sum();
            for i in 0..n {
                mag += x(i).abs();
                want2 += x(i) * x(i);
            }
            want += units as f64 / 7.0;
            let bound = (19.0 + (n.div_ceil(BLOCK).max(1) as f64).log2().ceil()) * 2f64.powi(-53);
            assert!(
                (s - want).abs() <= bound * mag + 1e-9,
                "n = {n}: {s} vs {want}"
            );
            assert!((sq - want2).abs() <= 1e-12 * want2.max(1.0), "n = {n}");
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
