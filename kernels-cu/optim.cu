// Fused Adam/AdamW over many parameters in one launch (blockIdx.y = parameter). Each thread
// reads found_inf and the grad scale on the device: on overflow it copies the old state to
// the outputs (nothing changes, the step count included); otherwise it unscales the gradient
// and updates, in the order of operations of the CPU implementation.
#include "dtype.cuh"

/// One parameter's buffers (f32 master weights and moments; grad dtype code 0/1/2).
struct AdamRef {
    unsigned long long p, g, m, v, vmax;           // inputs (vmax 0 without AMSGrad)
    unsigned long long p_out, g_out, m_out, v_out, vmax_out;
    unsigned long long step, step_out;             // f32 [1]
    long long len;
    int grad_dtype;
    int pad;
};

struct AdamHyper {
    float lr, beta1, beta2, eps, weight_decay;
    int amsgrad, decoupled, has_scale;
};

extern "C" __global__ void fused_adam(const AdamRef* params, AdamHyper h, const float* grad_scale,
                                      const float* found_inf) {
    AdamRef a = params[blockIdx.y];
    const float* p = reinterpret_cast<const float*>(a.p);
    const float* m = reinterpret_cast<const float*>(a.m);
    const float* v = reinterpret_cast<const float*>(a.v);
    const float* vmax = reinterpret_cast<const float*>(a.vmax);
    float* p_out = reinterpret_cast<float*>(a.p_out);
    float* m_out = reinterpret_cast<float*>(a.m_out);
    float* v_out = reinterpret_cast<float*>(a.v_out);
    float* vmax_out = reinterpret_cast<float*>(a.vmax_out);
    bool skip = found_inf != nullptr && *found_inf != 0.0f;
    float old_step = *reinterpret_cast<const float*>(a.step);
    float t = skip ? old_step : old_step + 1.0f;
    long long first = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (first == 0) *reinterpret_cast<float*>(a.step_out) = t;
    float bc1 = 1.0f - powf(h.beta1, t), bc2 = 1.0f - powf(h.beta2, t);
    float inv_scale = h.has_scale ? 1.0f / *grad_scale : 1.0f;
    for (long long i = first; i < a.len; i += (long long)gridDim.x * blockDim.x) {
        float g = load_coded(a.g, a.grad_dtype, i);
        if (skip) {
            p_out[i] = p[i];
            m_out[i] = m[i];
            v_out[i] = v[i];
            if (h.amsgrad) vmax_out[i] = vmax[i];
            store_coded(a.g_out, a.grad_dtype, i, g);
            continue;
        }
        g = h.has_scale ? g * inv_scale : g;
        store_coded(a.g_out, a.grad_dtype, i, g);
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
            vmax_out[i] = vhat;
        }
        float denom = sqrtf(vhat) * (1.0f / sqrtf(bc2)) + h.eps;
        p_out[i] = pi - mi / denom * (h.lr / bc1);
        m_out[i] = mi;
        v_out[i] = vi;
    }
}
HEMI_KERNEL(fused_adam)
