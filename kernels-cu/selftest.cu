// Kernels that exercise each emulator primitive; the Rust tests compare their output with a
// direct computation (and, on a GPU, the same kernels run on the device).
#include "prim.cuh"

/// out[t] = value of lane (lane * 7 + 3) % 32 of the same warp.
extern "C" __global__ void selftest_shfl(const int* in, int* out) {
    unsigned t = prim::thread_linear() + blockIdx.x * blockDim.x;
    out[t] = prim::shfl(in[t], (prim::lane_id() * 7 + 3) % 32);
}
HEMI_KERNEL(selftest_shfl)

/// out[t] = xor-shuffle by 5, then down-shuffle by 3.
extern "C" __global__ void selftest_shfl_xor_down(const float* in, float* out_xor, float* out_down) {
    unsigned t = prim::thread_linear() + blockIdx.x * blockDim.x;
    out_xor[t] = prim::shfl_xor(in[t], 5u);
    out_down[t] = prim::shfl_down(in[t], 3u);
}
HEMI_KERNEL(selftest_shfl_xor_down)

/// out[warp] = ballot of (in[t] > 0).
extern "C" __global__ void selftest_ballot(const float* in, unsigned* out) {
    unsigned t = prim::thread_linear() + blockIdx.x * blockDim.x;
    unsigned b = prim::ballot(in[t] > 0.0f);
    if (prim::lane_id() == 0) out[t / 32] = b;
}
HEMI_KERNEL(selftest_ballot)

/// Reverses each block's slice through dynamic shared memory (needs the barrier).
extern "C" __global__ void selftest_smem_reverse(const float* in, float* out) {
    float* s = prim::dynamic_smem<float>();
    unsigned n = blockDim.x, t = threadIdx.x, base = blockIdx.x * n;
    s[t] = in[base + t];
    prim::sync_threads();
    out[base + t] = s[n - 1 - t];
}
HEMI_KERNEL(selftest_smem_reverse)

/// out[0] += sum of in (atomics across blocks), out[1] = max (non-negative inputs); also a
/// block reduction through warp sums and a static shared array.
extern "C" __global__ void selftest_reduce(const float* in, int n, float* out) {
    __shared__ float partial[32];
    unsigned t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
    float v = i < static_cast<unsigned>(n) ? in[i] : 0.0f;
    float s = prim::warp_sum(v);
    float m = prim::warp_max(v);
    if (prim::lane_id() == 0) partial[t / 32] = s;
    prim::sync_threads();
    if (t == 0) {
        float total = 0.0f;
        for (unsigned w = 0; w < (blockDim.x + 31) / 32; ++w) total += partial[w];
        prim::atomic_add(&out[0], total);
    }
    if (prim::lane_id() == 0) prim::atomic_max_nonneg(&out[1], m);
}
HEMI_KERNEL(selftest_reduce)

/// A barrier inside divergent code: threads with odd index return first (never completes).
extern "C" __global__ void selftest_bad_barrier(float* out) {
    if (threadIdx.x % 2 == 1) return;
    prim::sync_threads();
    out[threadIdx.x] = 1.0f;
}
HEMI_KERNEL(selftest_bad_barrier)
