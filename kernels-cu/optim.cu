// Fused optimizer steps over many parameters in one launch (blockIdx.y = parameter), in place.
// Each thread reads found_inf (and the grad scale) on the device: on overflow nothing is
// written. Adam's step counts are incremented by a second, one-thread-per-parameter launch
// after the update, so no block of the update reads a count another block already advanced.
#include "dtype.cuh"
#include <cstddef>

/// One parameter's buffers for Adam (f32 master weights and moments; grad dtype code 0/1/2),
/// all updated in place. `vmax` is 0 without AMSGrad; `step` is f32 [1].
struct AdamRef {
    unsigned long long p, g, m, v, vmax, step;
    long long len;
    int grad_dtype;
    int pad;
};

struct AdamHyper {
    float lr, beta1, beta2, eps, weight_decay;
    int amsgrad, decoupled, has_scale;
};
// Layouts shared with `src/cuda/optim.rs` (asserted there too).
static_assert(sizeof(AdamRef) == 64 && offsetof(AdamRef, step) == 40, "AdamRef layout");
static_assert(offsetof(AdamRef, len) == 48 && offsetof(AdamRef, grad_dtype) == 56, "AdamRef layout");
static_assert(sizeof(AdamHyper) == 32 && offsetof(AdamHyper, amsgrad) == 20, "AdamHyper layout");

__device__ __forceinline__ bool overflowed(const float* found_inf) { return found_inf != nullptr && *found_inf != 0.0f; }

/// A grad scale whose inverse is not finite (it underflowed to 0, or is NaN) counts as an
/// overflow: unscaling by it would write inf/NaN into every gradient and parameter.
__device__ __forceinline__ bool unusable_scale(const float* grad_scale) {
    if (grad_scale == nullptr) return false;
    float inv = 1.0f / *grad_scale;
    return !(inv - inv == 0.0f);
}

/// The update, in the order of operations of the CPU implementation; the unscaled gradient
/// is written back when a scale is given.
extern "C" __global__ void fused_adam(const AdamRef* params, AdamHyper h, const float* grad_scale,
                                      const float* found_inf) {
    if (overflowed(found_inf) || (h.has_scale && unusable_scale(grad_scale))) return;
    AdamRef a = params[blockIdx.y];
    float* p = reinterpret_cast<float*>(a.p);
    float* m = reinterpret_cast<float*>(a.m);
    float* v = reinterpret_cast<float*>(a.v);
    float* vmax = reinterpret_cast<float*>(a.vmax);
    float t = *reinterpret_cast<const float*>(a.step) + 1.0f;
    float bc1 = 1.0f - powf(h.beta1, t), bc2 = 1.0f - powf(h.beta2, t);
    float inv_scale = h.has_scale ? 1.0f / *grad_scale : 1.0f;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < a.len; i += (long long)gridDim.x * blockDim.x) {
        float g = load_coded(a.g, a.grad_dtype, i);
        if (h.has_scale) {
            g = g * inv_scale;
            store_coded(a.g, a.grad_dtype, i, g);
        }
        float pi = p[i], gw = g;
        if (h.weight_decay != 0.0f) {
            if (h.decoupled) pi = pi * (1.0f - h.lr * h.weight_decay);
            else gw = gw + p[i] * h.weight_decay;
        }
        float mi = m[i] * h.beta1 + gw * (1.0f - h.beta1);
        float vi = v[i] * h.beta2 + gw * gw * (1.0f - h.beta2);
        float vhat = vi;
        if (h.amsgrad) {
            vhat = vmax[i] > vi ? vmax[i] : vi;
            vmax[i] = vhat;
        }
        float denom = sqrtf(vhat) * (1.0f / sqrtf(bc2)) + h.eps;
        p[i] = pi - mi / denom * (h.lr / bc1);
        m[i] = mi;
        v[i] = vi;
    }
}
HEMI_KERNEL(fused_adam)

/// Adds one to each parameter's step count (thread i = parameter i) unless overflowed (or
/// the grad scale, when given, is unusable).
extern "C" __global__ void adam_step_counts(const AdamRef* params, long long count, const float* found_inf,
                                            const float* grad_scale) {
    if (overflowed(found_inf) || unusable_scale(grad_scale)) return;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += (long long)gridDim.x * blockDim.x) {
        float* step = reinterpret_cast<float*>(params[i].step);
        *step = *step + 1.0f;
    }
}
HEMI_KERNEL(adam_step_counts)

/// One parameter's buffers for SGD (f32 weights; grad dtype code 0/1/2; `buf` 0 without
/// momentum), updated in place.
struct SgdRef {
    unsigned long long p, g, buf;
    long long len;
    int grad_dtype;
    int pad;
};

struct SgdHyper {
    float lr, momentum, one_minus_dampening, weight_decay;
    int nesterov, first_step, has_buf, pad;
};
static_assert(sizeof(SgdRef) == 40 && offsetof(SgdRef, len) == 24 && offsetof(SgdRef, grad_dtype) == 32, "SgdRef layout");
static_assert(sizeof(SgdHyper) == 32 && offsetof(SgdHyper, nesterov) == 16, "SgdHyper layout");

/// g += wd·p; buf = first ? g : momentum·buf + (1 − dampening)·g; g = nesterov ? g +
/// momentum·buf : buf; p −= lr·g — the CPU implementation's order of operations.
extern "C" __global__ void fused_sgd(const SgdRef* params, SgdHyper h, const float* found_inf) {
    if (overflowed(found_inf)) return;
    SgdRef a = params[blockIdx.y];
    float* p = reinterpret_cast<float*>(a.p);
    float* b = reinterpret_cast<float*>(a.buf);
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < a.len; i += (long long)gridDim.x * blockDim.x) {
        float d = load_coded(a.g, a.grad_dtype, i);
        if (h.weight_decay != 0.0f) d = d + p[i] * h.weight_decay;
        if (h.has_buf) {
            float bi = h.first_step ? d : b[i] * h.momentum + d * h.one_minus_dampening;
            b[i] = bi;
            d = h.nesterov ? d + bi * h.momentum : bi;
        }
        p[i] = p[i] - d * h.lr;
    }
}
HEMI_KERNEL(fused_sgd)
