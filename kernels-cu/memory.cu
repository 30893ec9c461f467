// The memory family: fill, strided gathers and scatters (copies of any dtype, by element
// size) and casts between F32, F16 and BF16. One thread per element, grid-stride loops.
#include "dtype.cuh"

/// Strided gather of elements of `bytes` bytes each (2, 4 or 8): any dtype.
#define HEMI_COPY(BYTES, T)                                                                         \
    extern "C" __global__ void copy_strided_b##BYTES(const T* x, Strided xs, T* y, long long n) {  \
        for (long long i = grid_start(); i < n; i += grid_step()) y[i] = x[strided_index(xs, i)];  \
    }                                                                                              \
    HEMI_KERNEL(copy_strided_b##BYTES)                                                             \
    extern "C" __global__ void copy_view_b##BYTES(const T* x, Strided xs, T* y, Strided ys,          \
                                                  long long n) {                                   \
        for (long long i = grid_start(); i < n; i += grid_step())                                  \
            y[strided_index(ys, i)] = x[strided_index(xs, i)];                                     \
    }                                                                                              \
    HEMI_KERNEL(copy_view_b##BYTES)                                                                \
    extern "C" __global__ void fill_b##BYTES(T* y, T value, long long n) {                         \
        for (long long i = grid_start(); i < n; i += grid_step()) y[i] = value;                    \
    }                                                                                              \
    HEMI_KERNEL(fill_b##BYTES)

HEMI_COPY(2, unsigned short)
HEMI_COPY(4, unsigned int)
HEMI_COPY(8, unsigned long long)

/// Casts between F32, F16 and BF16 (through f32, which holds both 16-bit types exactly).
#define HEMI_CAST(FROM, TF, TO, TT)                                                                  \
    extern "C" __global__ void cast_##FROM##_##TO(const TF* x, Strided xs, TT* y, long long n) {    \
        for (long long i = grid_start(); i < n; i += grid_step())                                   \
            y[i] = from_f32<TT>(to_f32(x[strided_index(xs, i)]));                                   \
    }                                                                                               \
    HEMI_KERNEL(cast_##FROM##_##TO)

HEMI_CAST(f32, float, f16, hemi_f16)
HEMI_CAST(f32, float, bf16, hemi_bf16)
HEMI_CAST(f16, hemi_f16, f32, float)
HEMI_CAST(bf16, hemi_bf16, f32, float)
HEMI_CAST(f16, hemi_f16, bf16, hemi_bf16)
HEMI_CAST(bf16, hemi_bf16, f16, hemi_f16)
