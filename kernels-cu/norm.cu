// The norm family: training-mode batch normalization over contiguous [N, C, S] (S = H·W;
// channels-last storage is [N·H·W, C, 1]), forward and backward, optionally fused with the
// ReLU that follows it (forward: clamp in the apply pass; backward: the ReLU's mask applied as
// the output gradient is read, from the saved ReLU output). One block per channel computes the channel's statistics with
// compensated per-thread sums and a block tree (sum.cuh) — the mean first, then the variance
// about it (two passes: no E[x²] − E[x]² cancellation); then a grid-stride kernel applies the
// per-channel affine map. x / y / dy / dx are f32, f16 or bf16 (T); weight, bias and the
// statistics have their own dtype code (f32, f16 or bf16), normally f32.
// Bounds (u = 2⁻²⁴, M = N·S): mean within 12u·mean|x|, variance within
// (12u + 2·12u)·mean(x − μ)² + rounding of μ; y rounded once into T.
#include "dtype.cuh"
#include "sum.cuh"

constexpr int NORM_THREADS = 256;

/// Stores channel `ch`'s mean `mu`, biased variance `v` and invstd (dtype `sdt`), and its affine
/// map scale = w·invstd, shift = b − mean·scale into `affine` (f32 [2C]).
__device__ __forceinline__ void bn_store_stats(unsigned long long w, unsigned long long b, int sdt, long long c,
                                               long long ch, float eps, float mu, float v, unsigned long long mean,
                                               unsigned long long var, unsigned long long invstd, float* affine) {
    float is = 1.0f / sqrtf(v + eps);
    store_coded(mean, sdt, ch, mu);
    store_coded(var, sdt, ch, v);
    store_coded(invstd, sdt, ch, is);
    float scale = load_coded(w, sdt, ch) * is;
    affine[ch] = scale;
    affine[c + ch] = load_coded(b, sdt, ch) - mu * scale;
}

/// Stores channel `ch`'s backward sums Σdy (`a`) and Σdy·x̂ (`bsum`): f32 into `sums` [2C], and
/// as dbias / dweight in dtype `sdt`.
__device__ __forceinline__ void bn_store_grad_sums(long long c, long long ch, float a, float bsum, int sdt,
                                                   unsigned long long dweight, unsigned long long dbias,
                                                   float* sums) {
    sums[ch] = a;
    sums[c + ch] = bsum;
    store_coded(dbias, sdt, ch, a);
    store_coded(dweight, sdt, ch, bsum);
}

/// Per-channel statistics: mean, biased variance, invstd (dtype `sdt`) and, in `affine`
/// (f32 [2C]), scale = w·invstd and shift = b − mean·scale. One block per channel.
template <typename T>
__device__ void bn_stats(const T* x, unsigned long long w, unsigned long long b, int sdt, long long n, long long c,
                         long long s, float eps, unsigned long long mean, unsigned long long var,
                         unsigned long long invstd, float* affine) {
    __shared__ float scratch[32];
    long long ch = blockIdx.x, m = n * s;
    CompensatedSum acc;
    for (long long j = threadIdx.x; j < m; j += blockDim.x) acc.add(to_f32(x[(j / s * c + ch) * s + j % s]));
    float mu = block_sum(acc.sum, scratch) / (float)m;
    CompensatedSum sq;
    for (long long j = threadIdx.x; j < m; j += blockDim.x) {
        float d = to_f32(x[(j / s * c + ch) * s + j % s]) - mu;
        sq.add(d * d);
    }
    float v = block_sum(sq.sum, scratch) / (float)m;
    if (threadIdx.x == 0) bn_store_stats(w, b, sdt, c, ch, eps, mu, v, mean, var, invstd, affine);
}

/// y = x·scale[ch] + shift[ch] over [N, C, S]; with `relu`, max(y, 0) (NaN kept), the fused
/// BN + ReLU: one pass over memory instead of two.
template <typename T>
__device__ void bn_apply(const T* x, const float* affine, T* y, long long c, long long s, long long total, int relu) {
    for (long long i = grid_start(); i < total; i += grid_step()) {
        long long ch = i / s % c;
        float v = to_f32(x[i]) * affine[ch] + affine[c + ch];
        if (relu && v <= 0.0f) v = 0.0f;
        y[i] = from_f32<T>(v);
    }
}

/// The output gradient of element i as batch norm sees it: with a fused ReLU (`z`, its output,
/// non-zero) PyTorch's threshold_backward, 0 where z <= 0.
template <typename T>
__device__ __forceinline__ float bn_grad_at(const T* dy, unsigned long long z, long long i) {
    if (z && to_f32(reinterpret_cast<const T*>(z)[i]) <= 0.0f) return 0.0f;
    return to_f32(dy[i]);
}

/// Per-channel Σdy and Σdy·x̂ (x̂ = (x − mean)·invstd) into dbias, dweight (dtype `sdt`) and
/// `sums` (f32 [2C]: Σdy, Σdy·x̂). One block per channel.
template <typename T>
__device__ void bn_backward_sums(const T* dy, unsigned long long z, const T* x, unsigned long long mean,
                                 unsigned long long invstd, int sdt, long long n, long long c, long long s,
                                 unsigned long long dweight, unsigned long long dbias, float* sums) {
    __shared__ float scratch[32];
    long long ch = blockIdx.x, m = n * s;
    float mu = load_coded(mean, sdt, ch), is = load_coded(invstd, sdt, ch);
    CompensatedSum sd, sdx;
    for (long long j = threadIdx.x; j < m; j += blockDim.x) {
        long long i = (j / s * c + ch) * s + j % s;
        float g = bn_grad_at(dy, z, i);
        sd.add(g);
        sdx.add(g * (to_f32(x[i]) - mu) * is);
    }
    float a = block_sum(sd.sum, scratch);
    float bsum = block_sum(sdx.sum, scratch);
    if (threadIdx.x == 0) bn_store_grad_sums(c, ch, a, bsum, sdt, dweight, dbias, sums);
}

/// dx = w·invstd/M · (M·dy − Σdy − x̂·Σdy·x̂).
template <typename T>
__device__ void bn_backward_dx(const T* dy, unsigned long long z, const T* x, unsigned long long w, unsigned long long mean,
                               unsigned long long invstd, int sdt, const float* sums, T* dx, long long n, long long c,
                               long long s) {
    long long total = n * c * s;
    float m = (float)(n * s);
    for (long long i = grid_start(); i < total; i += grid_step()) {
        long long ch = i / s % c;
        float is = load_coded(invstd, sdt, ch), xhat = (to_f32(x[i]) - load_coded(mean, sdt, ch)) * is;
        float k = load_coded(w, sdt, ch) * is / m;
        dx[i] = from_f32<T>(k * (m * bn_grad_at(dy, z, i) - sums[ch] - xhat * sums[c + ch]));
    }
}

// ---- Channels-last statistics: [M, C] row-major (S = 1), read coalesced ----
// The per-channel kernels above read a channel's values C elements apart when S = 1. Here a
// block takes 32 channels (one per lane) and one of gridDim.y row ranges; its 8 warps take
// every 8th row, so a warp reads 32 consecutive channels of a row. Each thread keeps
// compensated sums, the 8 warps' sums meet in a 3-level tree per channel, and the splits'
// partials [term][split][C] are summed compensated, in split order, by the finalize kernels:
// within (2 + 3 + 2)·u of the terms' magnitudes, inside the per-channel kernels' 12u.

constexpr int NHWC_WARPS = 8;

/// Per-(split, channel) sums of NT terms `term(row, ch, v)` over this block's rows into
/// parts[t][blockIdx.y][ch].
template <int NT, typename Term>
__device__ void nhwc_partial(long long m, long long c, float* parts, Term term) {
    __shared__ float red[NT][NHWC_WARPS][32];
    unsigned lane = prim::lane_id(), warp = threadIdx.x / 32;
    long long ch = (long long)blockIdx.x * 32 + lane;
    long long per = (m + gridDim.y - 1) / gridDim.y, r0 = blockIdx.y * per, r1 = r0 + per < m ? r0 + per : m;
    CompensatedSum acc[NT];
    long long r_end = ch < c ? r1 : r0;  // lanes past the last channel add nothing
    for (long long r = r0 + warp; r < r_end; r += NHWC_WARPS) {
        float v[NT];
        term(r, ch, v);
        for (int t = 0; t < NT; ++t) acc[t].add(v[t]);
    }
    for (int t = 0; t < NT; ++t) red[t][warp][lane] = acc[t].sum;
    prim::sync_threads();
    if (warp == 0 && ch < c)
        for (int t = 0; t < NT; ++t) {
            float a = red[t][0][lane] + red[t][4][lane], b = red[t][1][lane] + red[t][5][lane];
            float e = red[t][2][lane] + red[t][6][lane], f = red[t][3][lane] + red[t][7][lane];
            parts[((long long)t * gridDim.y + blockIdx.y) * c + ch] = (a + e) + (b + f);
        }
}

/// Σ over the splits of parts[t][·][ch], compensated, in split order.
__device__ __forceinline__ float nhwc_total(const float* parts, int t, int splits, long long c, long long ch) {
    CompensatedSum s;
    for (int z = 0; z < splits; ++z) s.add(parts[((long long)t * splits + z) * c + ch]);
    return s.sum;
}

/// Pass 1: Σx per (split, channel) into scratch[0][split][c].
template <typename T>
__device__ void bn_nhwc_sum(const T* x, long long m, long long c, float* scratch) {
    nhwc_partial<1>(m, c, scratch, [&](long long r, long long ch, float* v) { v[0] = to_f32(x[r * c + ch]); });
}

/// Pass 2: Σ(x − mean)² per (split, channel), mean = Σx/M from pass 1 (at scratch[2·splits·c]).
template <typename T>
__device__ void bn_nhwc_sqdev(const T* x, long long m, long long c, float* scratch) {
    const float* mean = scratch + 2 * (long long)gridDim.y * c;
    nhwc_partial<1>(m, c, scratch + (long long)gridDim.y * c, [&](long long r, long long ch, float* v) {
        float d = to_f32(x[r * c + ch]) - mean[ch];
        v[0] = d * d;
    });
}

/// Between the passes: mean[ch] = Σx/M (f32, at scratch[2·splits·c]).
__device__ void bn_nhwc_mean(long long m, long long c, int splits, float* scratch) {
    for (long long ch = grid_start(); ch < c; ch += grid_step())
        scratch[2 * (long long)splits * c + ch] = nhwc_total(scratch, 0, splits, c, ch) / (float)m;
}

/// After pass 2: the statistics and the affine map, as bn_stats writes them.
__device__ void bn_nhwc_finish(unsigned long long w, unsigned long long b, int sdt, long long m, long long c,
                               int splits, float eps, unsigned long long mean, unsigned long long var,
                               unsigned long long invstd, float* affine, const float* scratch) {
    for (long long ch = grid_start(); ch < c; ch += grid_step()) {
        float mu = scratch[2 * (long long)splits * c + ch], v = nhwc_total(scratch, 1, splits, c, ch) / (float)m;
        bn_store_stats(w, b, sdt, c, ch, eps, mu, v, mean, var, invstd, affine);
    }
}

/// Backward: Σdy and Σdy·x̂ per (split, channel) into scratch[0..2][split][c].
template <typename T>
__device__ void bn_nhwc_backward_partial(const T* dy, unsigned long long z, const T* x, unsigned long long mean,
                                         unsigned long long invstd, int sdt, long long m, long long c,
                                         float* scratch) {
    nhwc_partial<2>(m, c, scratch, [&](long long r, long long ch, float* v) {
        long long i = r * c + ch;
        float g = bn_grad_at(dy, z, i);
        v[0] = g;
        v[1] = g * (to_f32(x[i]) - load_coded(mean, sdt, ch)) * load_coded(invstd, sdt, ch);
    });
}

/// The backward's per-channel totals, as bn_backward_sums writes them.
__device__ void bn_nhwc_backward_sums(long long c, int splits, int sdt, unsigned long long dweight,
                                      unsigned long long dbias, float* sums, const float* scratch) {
    for (long long ch = grid_start(); ch < c; ch += grid_step()) {
        float a = nhwc_total(scratch, 0, splits, c, ch), bsum = nhwc_total(scratch, 1, splits, c, ch);
        bn_store_grad_sums(c, ch, a, bsum, sdt, dweight, dbias, sums);
    }
}

extern "C" __global__ void bn_nhwc_mean_kernel(long long m, long long c, int splits, float* scratch) {
    bn_nhwc_mean(m, c, splits, scratch);
}
HEMI_KERNEL(bn_nhwc_mean_kernel)
extern "C" __global__ void bn_nhwc_finish_kernel(unsigned long long w, unsigned long long b, int sdt, long long m,
                                                 long long c, int splits, float eps, unsigned long long mean,
                                                 unsigned long long var, unsigned long long invstd, float* affine,
                                                 const float* scratch) {
    bn_nhwc_finish(w, b, sdt, m, c, splits, eps, mean, var, invstd, affine, scratch);
}
HEMI_KERNEL(bn_nhwc_finish_kernel)
extern "C" __global__ void bn_nhwc_backward_sums_kernel(long long c, int splits, int sdt, unsigned long long dweight,
                                                        unsigned long long dbias, float* sums, const float* scratch) {
    bn_nhwc_backward_sums(c, splits, sdt, dweight, dbias, sums, scratch);
}
HEMI_KERNEL(bn_nhwc_backward_sums_kernel)

#define HEMI_NORM(SUFFIX, T)                                                                                   \
    extern "C" __global__ void __launch_bounds__(NORM_THREADS)                                                 \
        bn_stats_##SUFFIX(const T* x, unsigned long long w, unsigned long long b, int sdt, long long n,         \
                          long long c, long long s, float eps, unsigned long long mean, unsigned long long var,  \
                          unsigned long long invstd, float* affine) {                                          \
        bn_stats<T>(x, w, b, sdt, n, c, s, eps, mean, var, invstd, affine);                                    \
    }                                                                                                          \
    HEMI_KERNEL(bn_stats_##SUFFIX)                                                                             \
    extern "C" __global__ void bn_apply_##SUFFIX(const T* x, const float* affine, T* y, long long c, long long s, \
                                                 long long total, int relu) {                                  \
        bn_apply<T>(x, affine, y, c, s, total, relu);                                                          \
    }                                                                                                          \
    HEMI_KERNEL(bn_apply_##SUFFIX)                                                                             \
    extern "C" __global__ void __launch_bounds__(NORM_THREADS)                                                 \
        bn_backward_sums_##SUFFIX(const T* dy, unsigned long long z, const T* x, unsigned long long mean,      \
                                  unsigned long long invstd, int sdt, long long n, long long c, long long s,   \
                                  unsigned long long dweight, unsigned long long dbias, float* sums) {         \
        bn_backward_sums<T>(dy, z, x, mean, invstd, sdt, n, c, s, dweight, dbias, sums);                       \
    }                                                                                                          \
    HEMI_KERNEL(bn_backward_sums_##SUFFIX)                                                                     \
    extern "C" __global__ void bn_backward_dx_##SUFFIX(const T* dy, unsigned long long z, const T* x,          \
                                                       unsigned long long w, unsigned long long mean,          \
                                                       unsigned long long invstd, int sdt, const float* sums,  \
                                                       T* dx, long long n, long long c, long long s) {         \
        bn_backward_dx<T>(dy, z, x, w, mean, invstd, sdt, sums, dx, n, c, s);                                  \
    }                                                                                                          \
    HEMI_KERNEL(bn_backward_dx_##SUFFIX)                                                                       \
    extern "C" __global__ void __launch_bounds__(NHWC_WARPS * 32)                                              \
        bn_nhwc_sum_##SUFFIX(const T* x, long long m, long long c, float* scratch) {                           \
        bn_nhwc_sum<T>(x, m, c, scratch);                                                                      \
    }                                                                                                          \
    HEMI_KERNEL(bn_nhwc_sum_##SUFFIX)                                                                          \
    extern "C" __global__ void __launch_bounds__(NHWC_WARPS * 32)                                              \
        bn_nhwc_sqdev_##SUFFIX(const T* x, long long m, long long c, float* scratch) {                         \
        bn_nhwc_sqdev<T>(x, m, c, scratch);                                                                    \
    }                                                                                                          \
    HEMI_KERNEL(bn_nhwc_sqdev_##SUFFIX)                                                                        \
    extern "C" __global__ void __launch_bounds__(NHWC_WARPS * 32) bn_nhwc_backward_partial_##SUFFIX(           \
        const T* dy, unsigned long long z, const T* x, unsigned long long mean, unsigned long long invstd,      \
        int sdt, long long m, long long c, float* scratch) {                                                   \
        bn_nhwc_backward_partial<T>(dy, z, x, mean, invstd, sdt, m, c, scratch);                               \
    }                                                                                                          \
    HEMI_KERNEL(bn_nhwc_backward_partial_##SUFFIX)

HEMI_NORM(f32, float)
HEMI_NORM(f16, hemi_f16)
HEMI_NORM(bf16, hemi_bf16)
