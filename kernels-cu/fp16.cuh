// fp16.cuh — software conversions between f32 and the 16-bit float formats, bit-exact with
// the `half` crate (round to nearest even, overflow to ±inf, subnormals kept, NaN quieted
// with its payload's top bits), identical on the GPU and in the emulator.
#pragma once

#ifdef HEMI_SIM
#include <cstring>
#endif

__device__ __forceinline__ unsigned f32_bits(float f) {
#ifdef HEMI_SIM
    unsigned u;
    std::memcpy(&u, &f, 4);
    return u;
#else
    return __float_as_uint(f);
#endif
}

__device__ __forceinline__ float bits_f32(unsigned u) {
#ifdef HEMI_SIM
    float f;
    std::memcpy(&f, &u, 4);
    return f;
#else
    return __uint_as_float(u);
#endif
}

/// binary16 → f32, exact (NaN gets its quiet bit).
__device__ __forceinline__ float f16_to_f32(unsigned short h) {
    unsigned sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    if (exp == 0x1f) return bits_f32(sign | (man ? 0x7fc00000u : 0x7f800000u) | (man << 13));  // NaN quieted
    if (exp == 0) {
        if (man == 0) return bits_f32(sign);
        // subnormal: normalize
        int e = -1;
        do {
            man <<= 1;
            ++e;
        } while (!(man & 0x400u));
        return bits_f32(sign | ((unsigned)(112 - e) << 23) | ((man & 0x3ffu) << 13));
    }
    return bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}

/// f32 → binary16, round to nearest even.
__device__ __forceinline__ unsigned short f32_to_f16(float f) {
    unsigned x = f32_bits(f);
    unsigned sign = (x >> 16) & 0x8000u, exp = x & 0x7f800000u, man = x & 0x007fffffu;
    if (exp == 0x7f800000u) return (unsigned short)(sign | 0x7c00u | (man ? 0x0200u : 0u) | (man >> 13));
    int e = (int)(exp >> 23) - 127;
    if (e > 15) return (unsigned short)(sign | 0x7c00u);
    if (e >= -14) {
        unsigned half_man = man >> 13, round = man & 0x1fffu;
        unsigned out = sign | ((unsigned)(e + 15) << 10) | half_man;
        if (round > 0x1000u || (round == 0x1000u && (half_man & 1u))) out += 1;  // may carry to inf
        return (unsigned short)out;
    }
    if (e < -25) return (unsigned short)sign;
    unsigned full = man | 0x00800000u;
    unsigned shift = (unsigned)(-14 - e) + 13;
    unsigned kept = full >> shift, rem = full & ((1u << shift) - 1u), halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (kept & 1u))) kept += 1;
    return (unsigned short)(sign | kept);
}

/// bfloat16 → f32, exact (NaN gets its quiet bit).
__device__ __forceinline__ float bf16_to_f32(unsigned short b) {
    unsigned u = b;
    if ((u & 0x7fffu) > 0x7f80u) u |= 0x0040u;  // NaN quieted, as `half` does
    return bits_f32(u << 16);
}

/// f32 → bfloat16, round to nearest even (NaN keeps its top bits and gets the quiet bit).
__device__ __forceinline__ unsigned short f32_to_bf16(float f) {
    unsigned x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((x >> 16) | 0x0040u);
    if ((x & 0x8000u) && (x & 0x17fffu)) return (unsigned short)((x >> 16) + 1);
    return (unsigned short)(x >> 16);
}

