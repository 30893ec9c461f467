// prim.cuh — the only place with intrinsics / inline PTX (DESIGN.md §5). Kernels call prim::*
// and compile unchanged for the GPU (nvcc) and for the host emulator (HEMI_SIM, g++).
#pragma once

#ifndef HEMI_SIM
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>
// Registers nothing on the GPU: the driver finds kernels by name in the module.
#define HEMI_KERNEL(name)
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

/// `*addr += v`, returning the old value.
template <typename T>
__device__ __forceinline__ T atomic_add(T* addr, T v) {
#ifdef HEMI_SIM
    T old = *addr;  // fibers of a launch never preempt each other
    *addr = old + v;
    return old;
#else
    return atomicAdd(addr, v);
#endif
}

/// `*addr = max(*addr, v)` for non-negative floats (ordered as ints), returning the old value.
__device__ __forceinline__ float atomic_max_nonneg(float* addr, float v) {
#ifdef HEMI_SIM
    float old = *addr;
    if (v > old) *addr = v;
    return old;
#else
    return __int_as_float(atomicMax(reinterpret_cast<int*>(addr), __float_as_int(v)));
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

}  // namespace prim
