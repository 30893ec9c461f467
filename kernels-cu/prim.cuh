// prim.cuh — the only place with intrinsics / inline PTX (DESIGN.md §5). Kernels call prim::*
// and compile unchanged for the GPU (nvcc) and for the host emulator (HEMI_SIM, g++).
#pragma once

#ifndef HEMI_SIM
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>
// Registers nothing on the GPU: the driver finds kernels by name in the module.
#define HEMI_KERNEL(name)
#include <mma.h>
#endif

#include "fp16.cuh"

#ifdef HEMI_SIM
#include "sim/wmma.h"
#endif

/// A device function the compiler must not inline (`__noinline__`; GCC's attribute in the
/// emulator, where `__noinline__` would clash with library headers' own use of the name).
#ifdef HEMI_SIM
#define HEMI_NOINLINE __attribute__((noinline, noclone))
#else
#define HEMI_NOINLINE __noinline__
#endif

namespace prim {

/// Lane of this thread in its warp (threads are numbered x-fastest, as in CUDA).
__device__ __forceinline__ unsigned lane_id() {
    return (threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) & 31u;
}

/// Linear thread index within the block.
__device__ __forceinline__ unsigned thread_linear() {
    return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}

/// Block-wide barrier.
__device__ __forceinline__ void sync_threads() { __syncthreads(); }

/// Warp barrier over the lanes of `mask` (`__syncwarp`); the calling lane must be in `mask`.
__device__ __forceinline__ void sync_warp(unsigned mask = 0xffffffffu) {
#ifdef HEMI_SIM
    hemi_sim::warp_exchange(mask, 0);
#else
    __syncwarp(mask);
#endif
}

/// A 16-byte (or 8-byte) vector load, `ld.v4` / `ld.v2`: `p` must be aligned to the vector's
/// size, as the GPU faults on a misaligned vector access.
template <typename V>
__device__ __forceinline__ V load_vector(const V* p) {
    static_assert(sizeof(V) == 8 || sizeof(V) == 16, "vector accesses are 8 or 16 bytes");
#ifdef HEMI_SIM
    hemi_sim::check_aligned(p, sizeof(V), "vector load");
#endif
    return *p;
}

/// A 16-byte (or 8-byte) vector store; `p` aligned to the vector's size.
template <typename V>
__device__ __forceinline__ void store_vector(V* p, const V& v) {
    static_assert(sizeof(V) == 8 || sizeof(V) == 16, "vector accesses are 8 or 16 bytes");
#ifdef HEMI_SIM
    hemi_sim::check_aligned(p, sizeof(V), "vector store");
#endif
    *p = v;
}

/// Dynamic shared memory of the launch, as `T*`.
template <typename T>
__device__ __forceinline__ T* dynamic_smem() {
#ifdef HEMI_SIM
    return static_cast<T*>(hemi_sim::dynamic_smem());
#else
    extern __shared__ __align__(16) unsigned char hemi_dyn_smem[];
    return reinterpret_cast<T*>(hemi_dyn_smem);
#endif
}

#ifdef HEMI_SIM
template <typename T>
T shfl_from(unsigned mask, T v, unsigned src_lane) {
    const uint64_t* all = hemi_sim::warp_exchange(mask, hemi_sim::to_bits(v));
    return hemi_sim::from_bits<T>(all[src_lane & 31u]);
}
#endif

/// `v` of lane `src` (`__shfl_sync`).
template <typename T>
__device__ __forceinline__ T shfl(T v, unsigned src, unsigned mask = 0xffffffffu) {
#ifdef HEMI_SIM
    return shfl_from(mask, v, src);
#else
    return __shfl_sync(mask, v, src);
#endif
}

/// `v` of lane `lane ^ m` (`__shfl_xor_sync`).
template <typename T>
__device__ __forceinline__ T shfl_xor(T v, unsigned m, unsigned mask = 0xffffffffu) {
#ifdef HEMI_SIM
    return shfl_from(mask, v, lane_id() ^ m);
#else
    return __shfl_xor_sync(mask, v, m);
#endif
}

/// `v` of lane `lane + d`, or own `v` past the warp end (`__shfl_down_sync`).
template <typename T>
__device__ __forceinline__ T shfl_down(T v, unsigned d, unsigned mask = 0xffffffffu) {
#ifdef HEMI_SIM
    unsigned src = lane_id() + d;
    return shfl_from(mask, v, src < 32 ? src : lane_id());
#else
    return __shfl_down_sync(mask, v, d);
#endif
}

/// Bit `i` set when lane `i` (in `mask`) passed a true predicate (`__ballot_sync`).
__device__ __forceinline__ unsigned ballot(bool pred, unsigned mask = 0xffffffffu) {
#ifdef HEMI_SIM
    const uint64_t* all = hemi_sim::warp_exchange(mask, pred ? 1 : 0);
    unsigned bits = 0;
    for (unsigned i = 0; i < 32; ++i)
        if ((mask >> i & 1u) && all[i]) bits |= 1u << i;
    return bits;
#else
    return __ballot_sync(mask, pred);
#endif
}

/// `*addr += v`, returning the old value (f32, or 32/64-bit integers).
template <typename T>
__device__ __forceinline__ T atomic_add(T* addr, T v) {
#ifdef HEMI_SIM
    return hemi_sim::atomic_add(addr, v);  // blocks may run on several host threads
#else
    return atomicAdd(addr, v);
#endif
}

/// `*addr = max(*addr, v)` for non-negative floats (ordered as ints), returning the old value.
__device__ __forceinline__ float atomic_max_nonneg(float* addr, float v) {
#ifdef HEMI_SIM
    return hemi_sim::atomic_max_nonneg(addr, v);
#else
    return __int_as_float(atomicMax(reinterpret_cast<int*>(addr), __float_as_int(v)));
#endif
}

/// `*addr = min(*addr, v)` on unsigned 64-bit integers, returning the old value.
__device__ __forceinline__ unsigned long long atomic_min_u64(unsigned long long* addr, unsigned long long v) {
#ifdef HEMI_SIM
    return hemi_sim::atomic_min_u64(addr, v);
#else
    return atomicMin(addr, v);
#endif
}

/// Sum of `v` over the warp (every lane gets it).
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
    for (unsigned m = 16; m > 0; m >>= 1) v += shfl_xor(v, m);
    return v;
}

/// Maximum of `v` over the warp (every lane gets it).
template <typename T>
__device__ __forceinline__ T warp_max(T v) {
    for (unsigned m = 16; m > 0; m >>= 1) {
        T o = shfl_xor(v, m);
        v = o > v ? o : v;
    }
    return v;
}

/// Shared-memory address of a generic pointer, as PTX's `.shared` instructions take it.
__device__ __forceinline__ unsigned smem_addr(const void* p) {
#ifdef HEMI_SIM
    return 0;  // unused: the emulator dereferences generic pointers
#else
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
#endif
}

#ifdef HEMI_SIM
inline unsigned pack_b16(unsigned short lo, unsigned short hi) { return lo | (static_cast<unsigned>(hi) << 16); }

/// ldmatrix: each of `count` 8x8 b16 matrices takes its row addresses from lanes
/// 8m .. 8m+7; lane t receives row t/4, columns 2(t%4) and 2(t%4)+1 of each (transposed
/// with `trans`), following the PTX ISA.
inline void ldmatrix_sim(unsigned* r, const void* row, unsigned count, bool trans) {
    hemi_sim::check_aligned(row, 16, "ldmatrix row address");
    const uint64_t* rows = hemi_sim::warp_exchange(0xffffffffu, reinterpret_cast<uint64_t>(row));
    unsigned lane = lane_id();
    for (unsigned m = 0; m < count; ++m) {
        auto at = [&](unsigned rr, unsigned cc) {
            return reinterpret_cast<const unsigned short*>(rows[m * 8 + rr])[cc];
        };
        unsigned a = lane / 4, b = (lane % 4) * 2;
        r[m] = trans ? pack_b16(at(b, a), at(b + 1, a)) : pack_b16(at(a, b), at(a, b + 1));
    }
}
#endif

/// `ldmatrix.sync.aligned.m8n8.x{1,2,4}[.trans].shared.b16`: this lane's shared-memory row
/// address in, one register per matrix out.
template <int COUNT, bool TRANS = false>
__device__ __forceinline__ void ldmatrix(unsigned (&r)[COUNT], const void* smem_row) {
    static_assert(COUNT == 1 || COUNT == 2 || COUNT == 4, "ldmatrix loads 1, 2 or 4 matrices");
#ifdef HEMI_SIM
    ldmatrix_sim(r, smem_row, COUNT, TRANS);
#else
    unsigned a = smem_addr(smem_row);
    if constexpr (COUNT == 1 && !TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(a));
    else if constexpr (COUNT == 1)
        asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(a));
    else if constexpr (COUNT == 2 && !TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(a));
    else if constexpr (COUNT == 2)
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(a));
    else if constexpr (!TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
#endif
}

#ifdef HEMI_SIM
/// mma.m16n8k16 with the PTX ISA fragment layouts (groupID = lane/4, tig = lane%4):
/// A (16x16 row): a_i at row groupID (+8 for i%4 >= 2), col 2·tig + i%2 (+8 for i >= 4);
/// B (16x8 col): b_i at k = 2·tig + i%2 (+8 for i >= 2), n = groupID;
/// C/D (16x8): c_i at row groupID (+8 for i >= 2), col 2·tig + i%2.
/// Each lane decodes only what its four outputs need — A rows g and g+8 (held by lanes 4g..4g+3)
/// and B columns 2t and 2t+1 (lanes 8t..8t+7) — and sums over k in order from its C value. The
/// function touches registers only (the exchange is the emulator's), so it is left out of the
/// checkers' access instrumentation, which would otherwise see every register-array access.
template <typename CVT>
__attribute__((no_sanitize("thread"))) inline void mma_m16n8k16_sim(float* d, const unsigned* a, const unsigned* b,
                                                                    const float* c, CVT cvt) {
    uint64_t mine[6] = {a[0], a[1], a[2], a[3], b[0], b[1]};
    const uint64_t* all = hemi_sim::warp_exchange_words(0xffffffffu, mine, 6);
    unsigned lane = lane_id(), g = lane / 4, t = lane % 4;
    auto half_of = [&](unsigned l, unsigned i) {
        unsigned reg = static_cast<unsigned>(all[l * 6 + i / 2]);
        return static_cast<unsigned short>(i % 2 ? reg >> 16 : reg & 0xffffu);
    };
    float A[2][16], B[2][16];
    for (unsigned l = 4 * g; l < 4 * g + 4; ++l)
        for (unsigned i = 0; i < 8; ++i)
            A[(i % 4) >= 2 ? 1 : 0][2 * (l % 4) + i % 2 + (i >= 4 ? 8 : 0)] = cvt(half_of(l, i));
    for (unsigned l = 8 * t; l < 8 * t + 8; ++l)
        for (unsigned i = 0; i < 4; ++i)
            B[l / 4 - 2 * t][2 * (l % 4) + i % 2 + (i >= 2 ? 8 : 0)] = cvt(half_of(l, 8 + i));  // words 4, 5
    for (unsigned i = 0; i < 4; ++i) {
        float acc = c[i];
        for (unsigned k = 0; k < 16; ++k) acc += A[i >= 2 ? 1 : 0][k] * B[i % 2][k];
        d[i] = acc;
    }
}
#endif

/// `mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32`: D = A·B + C.
__device__ __forceinline__ void mma_m16n8k16_f16(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2],
                                                 const float (&c)[4]) {
#ifdef HEMI_SIM
    mma_m16n8k16_sim(d, a, b, c, [](unsigned short h) { return f16_to_f32(h); });
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
#endif
}

/// `mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32`: D = A·B + C.
__device__ __forceinline__ void mma_m16n8k16_bf16(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2],
                                                  const float (&c)[4]) {
#ifdef HEMI_SIM
    mma_m16n8k16_sim(d, a, b, c, [](unsigned short h) { return bf16_to_f32(h); });
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
#endif
}

/// `cp.async.cg.shared.global` of 16 bytes; when `valid` is false the 16 bytes are zeroed
/// (src-size 0). Both addresses 16-byte aligned. The emulator lands the copy only when a
/// `cp_async_wait` covers its group (with its checkers on).
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool valid) {
#ifdef HEMI_SIM
    hemi_sim::cp_async(smem, gmem, 16, valid);
#else
    unsigned src_size = valid ? 16u : 0u;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)), "l"(gmem), "r"(src_size));
#endif
}

/// `cp.async.commit_group`.
__device__ __forceinline__ void cp_async_commit() {
#ifdef HEMI_SIM
    hemi_sim::cp_async_commit();
#else
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}

/// `cp.async.wait_group N`: at most N committed groups still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#ifdef HEMI_SIM
    hemi_sim::cp_async_wait(N);
#else
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

}  // namespace prim
