// Reductions over a set of dims: the Rust side permutes the reduced dims last, so output o
// reduces the `chunk` consecutive logical elements o*chunk .. (o+1)*chunk of the view. One
// warp per output (grid-stride over outputs); f32 accumulation, one rounding at the store.
// Sums and means: compensated per lane, then a butterfly over the warp (sum.cuh), so for `n`
// reduced elements |s − Σx| ≤ 2·⌈log2 n⌉·2^-24·Σ|x| before the store's rounding (the mean
// divides once more). Max and min are exact.
#include "dtype.cuh"
#include "sum.cuh"

enum ReduceCode { R_SUM, R_MEAN, R_MAX, R_MIN };

/// Max or min with NaN propagating.
__device__ __forceinline__ float combine(int op, float a, float b) {
    if (a != a || b != b) return a != a ? a : b;
    return op == R_MAX ? (a > b ? a : b) : (a < b ? a : b);
}

__device__ __forceinline__ float identity(int op) { return op == R_MAX ? -INFINITY : INFINITY; }

template <typename T>
__device__ void reduce_impl(int op, const T* x, const Strided& xs, T* y, long long outer, long long chunk) {
    long long warp = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    long long warps = (long long)gridDim.x * blockDim.x / 32;
    unsigned lane = prim::lane_id();
    for (long long o = warp; o < outer; o += warps) {
        float acc;
        if (op == R_SUM || op == R_MEAN) {
            CompensatedSum sum;
            for (long long j = lane; j < chunk; j += 32) sum.add(to_f32(x[strided_index(xs, o * chunk + j)]));
            acc = prim::warp_sum(sum.sum);
            if (op == R_MEAN) acc = chunk > 0 ? acc / (float)chunk : NAN;
        } else {
            acc = identity(op);
            for (long long j = lane; j < chunk; j += 32) acc = combine(op, acc, to_f32(x[strided_index(xs, o * chunk + j)]));
            for (unsigned m = 16; m > 0; m >>= 1) acc = combine(op, acc, prim::shfl_xor(acc, m));
        }
        if (lane == 0) y[o] = from_f32<T>(acc);
    }
}

#define HEMI_REDUCE(SUFFIX, T)                                                                         \
    extern "C" __global__ void reduce_##SUFFIX(int op, const T* x, Strided xs, T* y, long long outer,   \
                                               long long chunk) {                                      \
        reduce_impl<T>(op, x, xs, y, outer, chunk);                                                    \
    }                                                                                                  \
    HEMI_KERNEL(reduce_##SUFFIX)

HEMI_REDUCE(f32, float)
HEMI_REDUCE(f16, hemi_f16)
HEMI_REDUCE(bf16, hemi_bf16)
