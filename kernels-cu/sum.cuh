// sum.cuh — how kernels add many f32 values (DESIGN.md §4, numerics): every thread keeps a
// compensated (Kahan) running sum of its terms, then threads combine in a butterfly tree.
//
// Bound (u = 2^-24): a thread's k terms carry |s − Σx| ≤ (2u + O(k·u²))·Σ|x| whatever k is,
// and a tree over T threads adds at most ⌈log2 T⌉ roundings (a partner subtree holding only
// zeros adds exactly). So a warp (T = 32) sum of n terms is within (2 + 5)·u·Σ|x| for n > 32
// and ⌈log2 n⌉·u·Σ|x| for n ≤ 32 (one term per lane), and a block (T ≤ 1024) sum within
// (2 + 10)·u·Σ|x|: both inside hemi's reduction bound 2·⌈log2 n⌉·u·Σ|x| for every n ≥ 2.
#pragma once
#include "mutant.cuh"
#include "prim.cuh"

/// A compensated running sum. An inf or NaN sum keeps no compensation, so non-finite terms
/// propagate as in a plain sum (inf + finite = inf, inf + -inf = NaN).
struct CompensatedSum {
    float sum = 0.0f;
    float comp = 0.0f;

    __device__ __forceinline__ void add(float x) {
        float y = x - comp;
        float t = sum + y;
        float c = (t - sum) - y;
        comp = c - c == 0.0f ? c : 0.0f;
        sum = t;
    }
};

/// Sum of every thread's `v`, returned to all threads of the block. The block size must be
/// a multiple of 32 (at most 1024) and every thread must call it; `scratch` is 32 floats of
/// shared memory, free again on return.
template <Mutant MUT = Mutant::None>
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    unsigned lane = prim::lane_id(), warp = threadIdx.x / 32, warps = blockDim.x / 32;
    v = prim::warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    prim::sync_threads();
    float w;
    if constexpr (MUT == Mutant::ReadUnwritten) w = prim::warp_sum(scratch[lane] * (lane < warps ? 1.0f : 0.0f));
    else w = prim::warp_sum(lane < warps ? scratch[lane] : 0.0f);
    prim::sync_threads();
    return w;
}
