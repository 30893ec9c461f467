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

/// Tensor-core tile D = A·B + C for m16n8k16 with one warp: A (16x16 row-major) and Bᵀ
/// (8x16 row-major, i.e. B column-major) go through shared memory and ldmatrix, C and D use
/// the accumulator layout. `bf16` selects the bfloat16 instruction.
extern "C" __global__ void selftest_mma(const unsigned short* a, const unsigned short* bt, const float* c, float* d,
                                        int bf16) {
    __shared__ __align__(16) unsigned short sa[16 * 16];
    __shared__ __align__(16) unsigned short sb[8 * 16];
    unsigned lane = prim::lane_id();
    for (unsigned i = lane; i < 256; i += 32) sa[i] = a[i];
    for (unsigned i = lane; i < 128; i += 32) sb[i] = bt[i];
    prim::sync_threads();
    unsigned ra[4], rb[2];
    prim::ldmatrix<4>(ra, &sa[(lane % 16) * 16 + (lane / 16) * 8]);
    prim::ldmatrix<2>(rb, &sb[(lane % 8) * 16 + ((lane / 8) % 2) * 8]);
    unsigned g = lane / 4, t = lane % 4;
    float rc[4], rd[4];
    for (unsigned i = 0; i < 4; ++i) rc[i] = c[(g + (i >= 2 ? 8 : 0)) * 8 + 2 * t + i % 2];
    if (bf16) prim::mma_m16n8k16_bf16(rd, ra, rb, rc);
    else prim::mma_m16n8k16_f16(rd, ra, rb, rc);
    for (unsigned i = 0; i < 4; ++i) d[(g + (i >= 2 ? 8 : 0)) * 8 + 2 * t + i % 2] = rd[i];
}
HEMI_KERNEL(selftest_mma)

/// ldmatrix x1 of one 8x8 b16 matrix, plain and transposed: out[lane] and out[32 + lane].
extern "C" __global__ void selftest_ldmatrix(const unsigned short* m, unsigned* out) {
    __shared__ __align__(16) unsigned short s[64];
    unsigned lane = prim::lane_id();
    s[lane] = m[lane];
    s[lane + 32] = m[lane + 32];
    prim::sync_threads();
    unsigned r[1], rt[1];
    prim::ldmatrix<1>(r, &s[(lane % 8) * 8]);
    prim::ldmatrix<1, true>(rt, &s[(lane % 8) * 8]);
    out[lane] = r[0];
    out[32 + lane] = rt[0];
}
HEMI_KERNEL(selftest_ldmatrix)

/// cp.async of 16-byte chunks into shared memory (odd chunks zero-filled), then copied out.
extern "C" __global__ void selftest_cp_async(const float* in, float* out) {
    __shared__ __align__(16) float s[4 * 32];
    unsigned lane = prim::lane_id();
    prim::cp_async_16(&s[lane * 4], &in[lane * 4], lane % 2 == 0);
    prim::cp_async_commit();
    prim::cp_async_wait<0>();
    prim::sync_threads();
    for (unsigned i = 0; i < 4; ++i) out[lane * 4 + i] = s[lane * 4 + i];
}
HEMI_KERNEL(selftest_cp_async)

/// nvcuda::wmma 16x16x16: D = A (row-major f16) · B (col-major f16) + 0.5, f32, row-major out.
extern "C" __global__ void selftest_wmma(const half* a, const half* b, float* d) {
    using namespace nvcuda;
    wmma::fragment<wmma::matrix_a, 16, 16, 16, half, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, half, wmma::col_major> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::fill_fragment(acc, 0.5f);
    wmma::load_matrix_sync(fa, a, 16);
    wmma::load_matrix_sync(fb, b, 16);
    wmma::mma_sync(acc, fa, fb, acc);
    wmma::store_matrix_sync(d, acc, 16, wmma::mem_row_major);
}
HEMI_KERNEL(selftest_wmma)

// ---- kernels the emulator's checkers must reject (tests/cuda_sim.rs, "checkers") ----

/// Each lane but 0 takes the value of the lane below through static shared memory; with
/// `sync` = 0 the __syncwarp between write and read is missing (a race racecheck must report).
extern "C" __global__ void selftest_warp_shift(const float* in, float* out, int sync) {
    __shared__ float s[1024];
    unsigned t = prim::thread_linear(), lane = prim::lane_id();
    s[t] = in[blockIdx.x * blockDim.x + t];
    if (sync) prim::sync_warp();
    out[blockIdx.x * blockDim.x + t] = s[lane == 0 ? t : t - 1];
}
HEMI_KERNEL(selftest_warp_shift)

/// Issues and commits a cp.async but never waits for it.
extern "C" __global__ void selftest_cp_async_no_wait(const float* in, float* out) {
    __shared__ __align__(16) float s[4 * 32];
    unsigned lane = prim::lane_id();
    prim::cp_async_16(&s[lane * 4], &in[lane * 4], true);
    prim::cp_async_commit();
    out[lane] = 1.0f;
}
HEMI_KERNEL(selftest_cp_async_no_wait)

/// The upper half-warp calls __syncwarp with a mask naming only the lower half.
extern "C" __global__ void selftest_syncwarp_foreign_mask(float* out) {
    prim::sync_warp(0x0000ffffu);
    out[prim::thread_linear()] = 1.0f;
}
HEMI_KERNEL(selftest_syncwarp_foreign_mask)

/// Every thread of every block stores its global index into out[0]: the value left shows
/// which thread ran last (the schedule shaker's test; a race only in global memory, which the
/// checkers do not track per byte).
extern "C" __global__ void selftest_last_writer(int* out) {
    out[0] = static_cast<int>(blockIdx.x * blockDim.x + prim::thread_linear());
}
HEMI_KERNEL(selftest_last_writer)

// Two barriers in functions of different bodies, never inlined, so no compiler (nvcc, or g++
// with or without sanitizers) can merge the two call sites into one.
__device__ HEMI_NOINLINE void selftest_barrier_after_one(float* p) {
    *p = 1.0f;
    prim::sync_threads();
}
__device__ HEMI_NOINLINE void selftest_barrier_after_two(float* p) {
    *p = 2.0f;
    prim::sync_threads();
    *p += 1.0f;
}

/// Odd and even threads wait at two different __syncthreads (a divergent barrier).
extern "C" __global__ void selftest_divergent_barrier(float* out) {
    if (threadIdx.x % 2 == 1) selftest_barrier_after_one(&out[threadIdx.x]);
    else selftest_barrier_after_two(&out[threadIdx.x]);
}
HEMI_KERNEL(selftest_divergent_barrier)
