// AMP kernels: the multi-tensor non-finite check + unscale (one launch for a whole gradient
// list) and the device-side loss-scale update (PyTorch's rule plus min/max and hysteresis).
#include "dtype.cuh"
#include <cstddef>

/// One tensor of a multi-tensor launch: address, element count, dtype code
/// (0 = f32, 1 = f16, 2 = bf16). Mirrored by `TensorRef` in `src/cuda/amp.rs`.
struct TensorRef {
    unsigned long long ptr;
    long long len;
    int dtype;
    int pad;
};
static_assert(sizeof(TensorRef) == 24, "TensorRef layout is shared with Rust");
static_assert(offsetof(TensorRef, len) == 8 && offsetof(TensorRef, dtype) == 16, "TensorRef layout");

/// blockIdx.y selects the tensor; x *= inv_scale in place; *found_inf = 1 on any inf/NaN.
/// With inv_scale == 1 (the check before a fused optimizer step) nothing is stored: the
/// values could not change, and the pass only reads.
extern "C" __global__ void non_finite_check_and_unscale(const TensorRef* tensors, float* found_inf,
                                                        const float* inv_scale) {
    TensorRef t = tensors[blockIdx.y];
    float inv = *inv_scale;
    // A scale that underflowed to 0 (inverse inf) or is NaN counts as an overflow; nothing is
    // written.
    if (!(inv - inv == 0.0f)) {
        if (blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0) *found_inf = 1.0f;
        return;
    }
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < t.len; i += (long long)gridDim.x * blockDim.x) {
        float v = load_coded(t.ptr, t.dtype, i);
        if (!(v - v == 0.0f)) *found_inf = 1.0f;  // inf - inf and NaN - NaN are NaN
        if (inv != 1.0f) store_coded(t.ptr, t.dtype, i, v * inv);
    }
}
HEMI_KERNEL(non_finite_check_and_unscale)

/// The scale update (one thread), in place. As PyTorch's `_amp_update_scale_`, the float
/// scale times a (double) factor is computed in double and rounded to float once, after the
/// min/max clamp; growth happens only when that float is finite.
extern "C" __global__ void update_scale(float* scale, long long* growth, long long* hyst, const float* found_inf,
                                        double growth_factor, double backoff_factor, long long growth_interval,
                                        double min_scale, double max_scale, long long hysteresis) {
    float s = *scale;
    long long g = *growth, h = *hyst;
    if (*found_inf != 0.0f) {
        g = 0;
        h -= 1;
        if (h <= 0) {
            double backed = (double)s * backoff_factor;
            s = (float)(backed > min_scale ? backed : min_scale);
        }
    } else {
        g += 1;
        if (g == growth_interval) {
            g = 0;
            h = hysteresis;
            double grown = (double)s * growth_factor;
            float rounded = (float)grown;
            if (rounded - rounded == 0.0f) s = (float)(grown < max_scale ? grown : max_scale);
        }
    }
    *scale = s;
    *growth = g;
    *hyst = h;
}
HEMI_KERNEL(update_scale)
