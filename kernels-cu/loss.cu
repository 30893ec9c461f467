// The loss family: softmax / log-softmax along the middle dim of contiguous [outer, size, inner], forward and
// backward, and fused cross-entropy with integer targets. One warp per line; f32 math.
// Every sum is compensated per lane and combined in a tree (sum.cuh), and every line is
// shifted by its max: the loss of a row is log Σ exp(x − m) − (x_t − m), never
// (m + log Σ …) − x_t, which cancels when the logits are large and the loss is small.
#include "dtype.cuh"
#include "sum.cuh"

__device__ __forceinline__ long long warp_global() { return ((long long)blockIdx.x * blockDim.x + threadIdx.x) / 32; }
__device__ __forceinline__ long long warp_count() { return (long long)gridDim.x * blockDim.x / 32; }

/// Max `m` and `lse = log Σ exp(x − m)` (relative to the max) of one line; all lanes get them.
template <typename T>
__device__ void line_stats(const T* x, long long base, long long size, long long inner, float& max, float& lse) {
    unsigned lane = prim::lane_id();
    float m = -INFINITY;
    for (long long j = lane; j < size; j += 32) {
        float v = to_f32(x[base + j * inner]);
        m = v > m ? v : m;
    }
    m = prim::warp_max(m);
    if (!(m > -INFINITY && m < INFINITY)) m = 0.0f;
    CompensatedSum s;
    for (long long j = lane; j < size; j += 32) s.add(expf(to_f32(x[base + j * inner]) - m));
    max = m;
    lse = logf(prim::warp_sum(s.sum));
}

template <typename T>
__device__ void softmax_impl(const T* x, T* y, long long outer, long long size, long long inner, int log) {
    unsigned lane = prim::lane_id();
    for (long long line = warp_global(); line < outer * inner; line += warp_count()) {
        long long base = (line / inner) * size * inner + line % inner;
        float m, lse;
        line_stats(x, base, size, inner, m, lse);
        for (long long j = lane; j < size; j += 32) {
            float v = to_f32(x[base + j * inner]) - m;
            y[base + j * inner] = from_f32<T>(log ? v - lse : expf(v - lse));
        }
    }
}

template <typename T>
__device__ void softmax_backward_impl(const T* y, const T* dy, T* dx, long long outer, long long size, long long inner, int log) {
    unsigned lane = prim::lane_id();
    for (long long line = warp_global(); line < outer * inner; line += warp_count()) {
        long long base = (line / inner) * size * inner + line % inner;
        CompensatedSum part;
        for (long long j = lane; j < size; j += 32) {
            long long i = base + j * inner;
            part.add(log ? to_f32(dy[i]) : to_f32(dy[i]) * to_f32(y[i]));
        }
        float s = prim::warp_sum(part.sum);
        for (long long j = lane; j < size; j += 32) {
            long long i = base + j * inner;
            float yv = to_f32(y[i]), g = to_f32(dy[i]);
            dx[i] = from_f32<T>(log ? g - expf(yv) * s : yv * (g - s));
        }
    }
}

/// Per-sample cross-entropy: loss[i] = (1−ε)·(lse − (x[t] − m)) + ε·(lse − mean_c(x[c] − m)),
/// with lse relative to the row max m; 0 for ignored samples.
template <typename T>
__device__ void ce_impl(const T* x, const long long* t, float* loss, long long n, long long c, long long ignore, float eps) {
    unsigned lane = prim::lane_id();
    for (long long row = warp_global(); row < n; row += warp_count()) {
        long long tgt = t[row];
        if (tgt == ignore) {
            if (lane == 0) loss[row] = 0.0f;
            continue;
        }
        float m, lse;
        line_stats(x, row * c, c, 1, m, lse);
        float nll = lse - (to_f32(x[row * c + tgt]) - m);
        if (eps != 0.0f) {
            CompensatedSum shifted;
            for (long long j = lane; j < c; j += 32) shifted.add(to_f32(x[row * c + j]) - m);
            float mean_nll = lse - prim::warp_sum(shifted.sum) / (float)c;
            nll = (1.0f - eps) * nll + eps * mean_nll;
        }
        if (lane == 0) loss[row] = nll;
    }
}

/// dlogits = (softmax − ((1−ε)·onehot + ε/C)) · w_i with w_i from the reduction.
template <typename T>
__device__ void ce_backward_impl(const T* x, const long long* t, const float* w, T* dx, long long n, long long c,
                                 long long ignore, float eps) {
    unsigned lane = prim::lane_id();
    for (long long row = warp_global(); row < n; row += warp_count()) {
        long long tgt = t[row];
        if (tgt == ignore) {
            for (long long j = lane; j < c; j += 32) dx[row * c + j] = from_f32<T>(0.0f);
            continue;
        }
        float m, lse;
        line_stats(x, row * c, c, 1, m, lse);
        float wi = w[row];
        for (long long j = lane; j < c; j += 32) {
            float p = expf(to_f32(x[row * c + j]) - m - lse);
            float target = (j == tgt ? 1.0f - eps : 0.0f) + eps / (float)c;
            dx[row * c + j] = from_f32<T>((p - target) * wi);
        }
    }
}

#define HEMI_SOFTMAX(SUFFIX, T)                                                                            \
    extern "C" __global__ void softmax_##SUFFIX(const T* x, T* y, long long outer, long long size,          \
                                                long long inner, int log) {                                \
        softmax_impl<T>(x, y, outer, size, inner, log);                                                    \
    }                                                                                                      \
    HEMI_KERNEL(softmax_##SUFFIX)                                                                          \
    extern "C" __global__ void softmax_backward_##SUFFIX(const T* y, const T* dy, T* dx, long long outer,   \
                                                         long long size, long long inner, int log) {       \
        softmax_backward_impl<T>(y, dy, dx, outer, size, inner, log);                                      \
    }                                                                                                      \
    HEMI_KERNEL(softmax_backward_##SUFFIX)                                                                 \
    extern "C" __global__ void cross_entropy_##SUFFIX(const T* x, const long long* t, float* loss,         \
                                                      long long n, long long c, long long ignore,          \
                                                      float eps) {                                         \
        ce_impl<T>(x, t, loss, n, c, ignore, eps);                                                         \
    }                                                                                                      \
    HEMI_KERNEL(cross_entropy_##SUFFIX)                                                                    \
    extern "C" __global__ void cross_entropy_backward_##SUFFIX(const T* x, const long long* t,             \
                                                               const float* w, T* dx, long long n,         \
                                                               long long c, long long ignore, float eps) { \
        ce_backward_impl<T>(x, t, w, dx, n, c, ignore, eps);                                               \
    }                                                                                                      \
    HEMI_KERNEL(cross_entropy_backward_##SUFFIX)

HEMI_SOFTMAX(f32, float)
HEMI_SOFTMAX(f16, hemi_f16)
HEMI_SOFTMAX(bf16, hemi_bf16)

/// Finds the first target outside [0, c) that is not `ignore`: *bad = min such row (or n).
extern "C" __global__ void validate_targets(const long long* t, long long n, long long c, long long ignore,
                                            long long* bad) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        long long v = t[i];
        if (v != ignore && (v < 0 || v >= c))
            prim::atomic_min_u64(reinterpret_cast<unsigned long long*>(bad), (unsigned long long)i);
    }
}
HEMI_KERNEL(validate_targets)

/// Reduces per-sample losses to the output value: reduction 1 = mean over non-ignored,
/// otherwise the sum. One block of a multiple of 32 threads; compensated per thread, then a
/// block tree (sum.cuh); sample counts are exact below 2^24.
template <Mutant MUT = Mutant::None>
__device__ void ce_reduce_impl(const float* loss, const long long* t, long long n, long long ignore, int reduction,
                               float* out) {
    __shared__ float scratch[32];
    CompensatedSum s;
    float k = 0.0f;
    for (long long i = threadIdx.x; i < n; i += blockDim.x) {
        s.add(loss[i]);
        k += t[i] != ignore ? 1.0f : 0.0f;
    }
    float total = block_sum<MUT>(s.sum, scratch);
    float valid = block_sum(k, scratch);
    if (threadIdx.x == 0) out[0] = reduction == 1 ? total / valid : total;
}

extern "C" __global__ void ce_reduce(const float* loss, const long long* t, long long n, long long ignore,
                                     int reduction, float* out) {
    ce_reduce_impl(loss, t, n, ignore, reduction, out);
}
HEMI_KERNEL(ce_reduce)
#ifdef HEMI_SIM
extern "C" __global__ void ce_reduce__read_unwritten(const float* loss, const long long* t, long long n,
                                                     long long ignore, int reduction, float* out) {
    ce_reduce_impl<Mutant::ReadUnwritten>(loss, t, n, ignore, reduction, out);
}
HEMI_MUTANT_KERNEL(ce_reduce__read_unwritten)
#endif

/// Per-sample backward weights from the loss gradient: none → g[i], sum → g[0],
/// mean → g[0] / valid (valid counted here). One block of a multiple of 32 threads.
extern "C" __global__ void ce_weights(const float* g, const long long* t, long long n, long long ignore,
                                      int reduction, float* w) {
    __shared__ float scratch[32];
    float k = 0.0f;
    for (long long i = threadIdx.x; i < n; i += blockDim.x) k += t[i] != ignore ? 1.0f : 0.0f;
    float valid = block_sum(k, scratch);
    for (long long i = threadIdx.x; i < n; i += blockDim.x)
        w[i] = reduction == 0 ? g[i] : (reduction == 2 ? g[0] : g[0] / valid);
}
HEMI_KERNEL(ce_weights)
