// The pool family over NCHW or channels-last (NHWC) images: max pooling with the argmax of every output (flat
// h·W + w in its plane; the first maximum, or the last NaN, as PyTorch), average pooling
// (PyTorch's count_include_pad divisor, floor mode), adaptive average pooling (windows
// floor(i·H/oh) .. ceil((i+1)·H/oh)), and their gradients. Every kernel is a grid-stride
// loop over its outputs; the gradients gather (each input element sums the outputs whose
// windows hold it), so they need no atomics and no zeroed output. f32 accumulation, rounded
// once into T (f32, f16, bf16).
#include "dtype.cuh"

/// `struct PoolArgs`, shared with `src/cuda/pool/launch.rs` (layout asserted on both sides).
/// A plane is one (n, c) image channel: plane = n·C + c.
struct PoolArgs {
    long long planes, h, w, oh, ow;
    int kh, kw, sh, sw, ph, pw, dh, dw;
    int count_include_pad, channels_last;
    long long c;  // channels (the NHWC index needs them)
};
static_assert(sizeof(PoolArgs) == 88 && offsetof(PoolArgs, kh) == 40, "PoolArgs layout");
static_assert(offsetof(PoolArgs, channels_last) == 76 && offsetof(PoolArgs, c) == 80, "PoolArgs layout");

/// Storage index of element (plane, y, x) of images of rows x cols, NCHW or NHWC.
__device__ __forceinline__ long long pool_at(const PoolArgs& g, long long plane, long long y, long long x,
                                             long long rows, long long cols) {
    if (!g.channels_last) return (plane * rows + y) * cols + x;
    return ((plane / g.c * rows + y) * cols + x) * g.c + plane % g.c;
}

/// (plane, y, x) of the element at storage index i of images of rows x cols.
__device__ __forceinline__ void pool_coords(const PoolArgs& g, long long i, long long rows, long long cols,
                                            long long& plane, long long& y, long long& x) {
    long long pix = g.channels_last ? i / g.c : i;
    x = pix % cols;
    y = pix / cols % rows;
    plane = g.channels_last ? pix / (cols * rows) * g.c + i % g.c : pix / (cols * rows);
}

/// Input index of tap t of output o along one axis (may be outside [0, size)).
__device__ __forceinline__ long long pool_tap(long long o, int t, int stride, int pad, int dil) {
    return o * stride - pad + (long long)t * dil;
}

template <typename T>
__device__ void max_pool_fwd(PoolArgs g, const T* x, T* y, long long* idx) {
    long long total = g.planes * g.oh * g.ow;
    for (long long i = grid_start(); i < total; i += grid_step()) {
        long long plane, oy, ox;
        pool_coords(g, i, g.oh, g.ow, plane, oy, ox);
        float best = -INFINITY;
        long long arg = -1;
        // The first maximum wins ties; every NaN replaces the best, so the last NaN of the
        // window is the argmax (PyTorch's `val > maxval || isnan(val)`).
        for (int ty = 0; ty < g.kh; ++ty) {
            long long yy = pool_tap(oy, ty, g.sh, g.ph, g.dh);
            if (yy < 0 || yy >= g.h) continue;
            for (int tx = 0; tx < g.kw; ++tx) {
                long long xx = pool_tap(ox, tx, g.sw, g.pw, g.dw);
                if (xx < 0 || xx >= g.w) continue;
                float v = to_f32(x[pool_at(g, plane, yy, xx, g.h, g.w)]);
                if (v > best || v != v || arg < 0) {
                    best = v;
                    arg = yy * g.w + xx;
                }
            }
        }
        y[i] = from_f32<T>(best);
        idx[i] = arg;
    }
}

/// dx[plane, j] = Σ dy over the outputs of the plane whose argmax is j (the outputs whose
/// windows can hold j are found per axis).
template <typename T>
__device__ void max_pool_bwd(PoolArgs g, const T* dy, const long long* idx, T* dx) {
    long long total = g.planes * g.h * g.w;
    for (long long i = grid_start(); i < total; i += grid_step()) {
        long long plane, yy, xx;
        pool_coords(g, i, g.h, g.w, plane, yy, xx);
        long long j = yy * g.w + xx;
        float acc = 0.0f;
        for (int ty = 0; ty < g.kh; ++ty) {
            long long ny = yy + g.ph - (long long)ty * g.dh;
            if (ny < 0 || ny % g.sh != 0 || ny / g.sh >= g.oh) continue;
            for (int tx = 0; tx < g.kw; ++tx) {
                long long nx = xx + g.pw - (long long)tx * g.dw;
                if (nx < 0 || nx % g.sw != 0 || nx / g.sw >= g.ow) continue;
                long long o = pool_at(g, plane, ny / g.sh, nx / g.sw, g.oh, g.ow);
                if (idx[o] == j) acc += to_f32(dy[o]);
            }
        }
        dx[i] = from_f32<T>(acc);
    }
}

/// The window of output o along one axis, clipped to [0, size), and its extent clipped to the
/// padded input (the count_include_pad divisor).
__device__ __forceinline__ void avg_window(long long o, int k, int s, int p, long long size, long long& lo,
                                           long long& hi, long long& padded) {
    long long start = o * s - p, end = start + k;
    padded = (end < size + p ? end : size + p) - start;
    lo = start < 0 ? 0 : start;
    hi = end < size ? end : size;
}

__device__ __forceinline__ float avg_divisor(const PoolArgs& g, long long oy, long long ox) {
    long long ylo, yhi, yp, xlo, xhi, xp;
    avg_window(oy, g.kh, g.sh, g.ph, g.h, ylo, yhi, yp);
    avg_window(ox, g.kw, g.sw, g.pw, g.w, xlo, xhi, xp);
    return g.count_include_pad ? (float)(yp * xp) : (float)((yhi - ylo) * (xhi - xlo));
}

template <typename T>
__device__ void avg_pool_fwd(PoolArgs g, const T* x, T* y) {
    long long total = g.planes * g.oh * g.ow;
    for (long long i = grid_start(); i < total; i += grid_step()) {
        long long plane, oy, ox;
        pool_coords(g, i, g.oh, g.ow, plane, oy, ox);
        long long ylo, yhi, yp, xlo, xhi, xp;
        avg_window(oy, g.kh, g.sh, g.ph, g.h, ylo, yhi, yp);
        avg_window(ox, g.kw, g.sw, g.pw, g.w, xlo, xhi, xp);
        float acc = 0.0f;
        for (long long yy = ylo; yy < yhi; ++yy)
            for (long long xx = xlo; xx < xhi; ++xx) acc += to_f32(x[pool_at(g, plane, yy, xx, g.h, g.w)]);
        y[i] = from_f32<T>(acc / avg_divisor(g, oy, ox));
    }
}

template <typename T>
__device__ void avg_pool_bwd(PoolArgs g, const T* dy, T* dx) {
    long long total = g.planes * g.h * g.w;
    for (long long i = grid_start(); i < total; i += grid_step()) {
        long long plane, yy, xx;
        pool_coords(g, i, g.h, g.w, plane, yy, xx);
        float acc = 0.0f;
        for (int ty = 0; ty < g.kh; ++ty) {
            long long ny = yy + g.ph - ty;
            if (ny < 0 || ny % g.sh != 0 || ny / g.sh >= g.oh) continue;
            for (int tx = 0; tx < g.kw; ++tx) {
                long long nx = xx + g.pw - tx;
                if (nx < 0 || nx % g.sw != 0 || nx / g.sw >= g.ow) continue;
                long long oy = ny / g.sh, ox = nx / g.sw;
                acc += to_f32(dy[pool_at(g, plane, oy, ox, g.oh, g.ow)]) / avg_divisor(g, oy, ox);
            }
        }
        dx[i] = from_f32<T>(acc);
    }
}

__device__ __forceinline__ long long adaptive_lo(long long i, long long in, long long out) { return i * in / out; }
__device__ __forceinline__ long long adaptive_hi(long long i, long long in, long long out) {
    return ((i + 1) * in + out - 1) / out;
}

template <typename T>
__device__ void adaptive_avg_fwd(PoolArgs g, const T* x, T* y) {
    long long total = g.planes * g.oh * g.ow;
    for (long long i = grid_start(); i < total; i += grid_step()) {
        long long plane, oy, ox;
        pool_coords(g, i, g.oh, g.ow, plane, oy, ox);
        long long y0 = adaptive_lo(oy, g.h, g.oh), y1 = adaptive_hi(oy, g.h, g.oh);
        long long x0 = adaptive_lo(ox, g.w, g.ow), x1 = adaptive_hi(ox, g.w, g.ow);
        float acc = 0.0f;
        for (long long yy = y0; yy < y1; ++yy)
            for (long long xx = x0; xx < x1; ++xx) acc += to_f32(x[pool_at(g, plane, yy, xx, g.h, g.w)]);
        y[i] = from_f32<T>(acc / (float)((y1 - y0) * (x1 - x0)));
    }
}

template <typename T>
__device__ void adaptive_avg_bwd(PoolArgs g, const T* dy, T* dx) {
    long long total = g.planes * g.h * g.w;
    for (long long i = grid_start(); i < total; i += grid_step()) {
        long long plane, yy, xx;
        pool_coords(g, i, g.h, g.w, plane, yy, xx);
        float acc = 0.0f;
        for (long long oy = yy * g.oh / g.h; oy < g.oh && adaptive_lo(oy, g.h, g.oh) <= yy; ++oy) {
            long long y0 = adaptive_lo(oy, g.h, g.oh), y1 = adaptive_hi(oy, g.h, g.oh);
            if (yy < y0 || yy >= y1) continue;
            for (long long ox = xx * g.ow / g.w; ox < g.ow && adaptive_lo(ox, g.w, g.ow) <= xx; ++ox) {
                long long x0 = adaptive_lo(ox, g.w, g.ow), x1 = adaptive_hi(ox, g.w, g.ow);
                if (xx < x0 || xx >= x1) continue;
                acc += to_f32(dy[pool_at(g, plane, oy, ox, g.oh, g.ow)]) / (float)((y1 - y0) * (x1 - x0));
            }
        }
        dx[i] = from_f32<T>(acc);
    }
}

#define HEMI_POOL(SUFFIX, T)                                                                               \
    extern "C" __global__ void max_pool_##SUFFIX(PoolArgs g, const T* x, T* y, long long* idx) {            \
        max_pool_fwd<T>(g, x, y, idx);                                                                     \
    }                                                                                                      \
    HEMI_KERNEL(max_pool_##SUFFIX)                                                                         \
    extern "C" __global__ void max_pool_backward_##SUFFIX(PoolArgs g, const T* dy, const long long* idx,   \
                                                          T* dx) {                                         \
        max_pool_bwd<T>(g, dy, idx, dx);                                                                   \
    }                                                                                                      \
    HEMI_KERNEL(max_pool_backward_##SUFFIX)                                                                \
    extern "C" __global__ void avg_pool_##SUFFIX(PoolArgs g, const T* x, T* y) { avg_pool_fwd<T>(g, x, y); } \
    HEMI_KERNEL(avg_pool_##SUFFIX)                                                                         \
    extern "C" __global__ void avg_pool_backward_##SUFFIX(PoolArgs g, const T* dy, T* dx) {                \
        avg_pool_bwd<T>(g, dy, dx);                                                                        \
    }                                                                                                      \
    HEMI_KERNEL(avg_pool_backward_##SUFFIX)                                                                \
    extern "C" __global__ void adaptive_avg_pool_##SUFFIX(PoolArgs g, const T* x, T* y) {                  \
        adaptive_avg_fwd<T>(g, x, y);                                                                      \
    }                                                                                                      \
    HEMI_KERNEL(adaptive_avg_pool_##SUFFIX)                                                                \
    extern "C" __global__ void adaptive_avg_pool_backward_##SUFFIX(PoolArgs g, const T* dy, T* dx) {       \
        adaptive_avg_bwd<T>(g, dy, dx);                                                                    \
    }                                                                                                      \
    HEMI_KERNEL(adaptive_avg_pool_backward_##SUFFIX)

HEMI_POOL(f32, float)
HEMI_POOL(f16, hemi_f16)
HEMI_POOL(bf16, hemi_bf16)
