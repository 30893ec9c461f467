// dtype.cuh — element types of hemi's kernels and their conversions to and from f32.
// F16 and BF16 are raw 16-bit patterns converted in software, bit-exact with the `half` crate
// (round to nearest even, overflow to ±inf, subnormals kept, NaN quieted with its payload's
// top bits) on the GPU and in the emulator alike.
#pragma once
#include "prim.cuh"

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

/// A strided view as kernels receive it (by value): element offset, then dims and strides
/// in elements, outermost first. Ranks above 8 are rejected by the Rust wrappers.
struct Strided {
    long long offset;
    int rank;
    int pad;
    long long dims[8];
    long long strides[8];
};

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
