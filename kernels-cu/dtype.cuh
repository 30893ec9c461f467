// dtype.cuh — element types of hemi's kernels and their conversions to and from f32.
// F16 and BF16 are raw 16-bit patterns converted in software, bit-exact with the `half` crate
// (round to nearest even, overflow to ±inf, subnormals kept, NaN quieted with its payload's
// top bits) on the GPU and in the emulator alike.
#pragma once
#include "prim.cuh"
#include <cstddef>

/// First element and stride of a 1-D grid-stride loop.
__device__ __forceinline__ long long grid_start() { return (long long)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ long long grid_step() { return (long long)gridDim.x * blockDim.x; }

struct hemi_f16 {
    unsigned short bits;
};
struct hemi_bf16 {
    unsigned short bits;
};

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(hemi_f16 v) { return f16_to_f32(v.bits); }
__device__ __forceinline__ float to_f32(hemi_bf16 v) { return bf16_to_f32(v.bits); }

template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) {
    return v;
}
template <>
__device__ __forceinline__ hemi_f16 from_f32<hemi_f16>(float v) {
    return hemi_f16{f32_to_f16(v)};
}
template <>
__device__ __forceinline__ hemi_bf16 from_f32<hemi_bf16>(float v) {
    return hemi_bf16{f32_to_bf16(v)};
}

/// Dtype codes of kernels that take the dtype at run time (0 = f32, 1 = f16, 2 = bf16),
/// mirrored by `dtype_code` in `src/cuda/kernels/mod.rs`.
__device__ __forceinline__ float load_coded(unsigned long long p, int dt, long long i) {
    if (dt == 1) return to_f32(reinterpret_cast<const hemi_f16*>(p)[i]);
    if (dt == 2) return to_f32(reinterpret_cast<const hemi_bf16*>(p)[i]);
    return reinterpret_cast<const float*>(p)[i];
}

/// Stores `v` rounded once into the dtype of code `dt`.
__device__ __forceinline__ void store_coded(unsigned long long p, int dt, long long i, float v) {
    if (dt == 1) reinterpret_cast<hemi_f16*>(p)[i] = from_f32<hemi_f16>(v);
    else if (dt == 2) reinterpret_cast<hemi_bf16*>(p)[i] = from_f32<hemi_bf16>(v);
    else reinterpret_cast<float*>(p)[i] = v;
}

/// A strided view as kernels receive it (by value): element offset, then dims and strides
/// in elements, outermost first. Ranks above 8 are rejected by the Rust wrappers.
struct Strided {
    long long offset;
    int rank;
    int pad;
    long long dims[8];
    long long strides[8];
};
// Shared with `Strided` in src/cuda/launch.rs (asserted there too).
static_assert(sizeof(Strided) == 144 && offsetof(Strided, rank) == 8, "Strided layout");
static_assert(offsetof(Strided, dims) == 16 && offsetof(Strided, strides) == 80, "Strided layout");

/// Storage index of logical (row-major) element `i` of `s`.
__device__ __forceinline__ long long strided_index(const Strided& s, long long i) {
    long long off = s.offset;
    for (int d = s.rank - 1; d >= 0; --d) {
        long long n = s.dims[d];
        off += (i % n) * s.strides[d];
        i /= n;
    }
    return off;
}
