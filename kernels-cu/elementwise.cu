// Elementwise kernels: fill, strided copy, casts, unary and broadcasting binary ops. One
// thread per output element in a grid-stride loop; compute in f32, one rounding at the store.
#include "dtype.cuh"

// Unary op codes (mirrored by src/cuda/kernels/elementwise.rs).
enum UnaryCode { U_NEG, U_EXP, U_LOG, U_SQRT, U_RSQRT, U_ABS, U_SQUARE, U_RECIP, U_RELU, U_STEP, U_SIGN, U_AFFINE, U_POWF };
enum BinaryCode { B_ADD, B_SUB, B_MUL, B_DIV, B_MAX, B_MIN, B_EQ };

__device__ __forceinline__ long long grid_start() { return (long long)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ long long grid_step() { return (long long)gridDim.x * blockDim.x; }

__device__ __forceinline__ float apply_unary(int op, float x, float a, float b) {
    switch (op) {
        case U_NEG: return -x;
        case U_EXP: return expf(x);
        case U_LOG: return logf(x);
        case U_SQRT: return sqrtf(x);
        case U_RSQRT: return 1.0f / sqrtf(x);
        case U_ABS: return fabsf(x);
        case U_SQUARE: return x * x;
        case U_RECIP: return 1.0f / x;
        case U_RELU: return (x != x || x > 0.0f) ? x : 0.0f;
        case U_STEP: return x > 0.0f ? 1.0f : 0.0f;
        case U_SIGN: return x != x ? x : (x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : 0.0f));
        case U_AFFINE: return x * a + b;
        default: return powf(x, a);
    }
}

__device__ __forceinline__ float apply_binary(int op, float x, float y) {
    switch (op) {
        case B_ADD: return x + y;
        case B_SUB: return x - y;
        case B_MUL: return x * y;
        case B_DIV: return x / y;
        case B_MAX: return (x != x || y != y) ? (x + y) : (x > y ? x : y);
        case B_MIN: return (x != x || y != y) ? (x + y) : (x < y ? x : y);
        default: return x == y ? 1.0f : 0.0f;
    }
}

/// 16 bytes of elements, for vectorized loads and stores.
template <typename T>
struct __align__(16) Vec16 {
    T v[16 / sizeof(T)];
};

/// Contiguous, 16-byte-aligned operands: 16-byte vector accesses, scalar tail.
template <typename T>
__device__ void unary_contig(int op, float a, float b, const T* x, T* y, long long n) {
    constexpr int V = 16 / sizeof(T);
    long long nv = n / V;
    const Vec16<T>* xv = reinterpret_cast<const Vec16<T>*>(x);
    Vec16<T>* yv = reinterpret_cast<Vec16<T>*>(y);
    for (long long i = grid_start(); i < nv; i += grid_step()) {
        Vec16<T> in = xv[i], out;
        for (int j = 0; j < V; ++j) out.v[j] = from_f32<T>(apply_unary(op, to_f32(in.v[j]), a, b));
        yv[i] = out;
    }
    for (long long i = nv * V + grid_start(); i < n; i += grid_step()) y[i] = from_f32<T>(apply_unary(op, to_f32(x[i]), a, b));
}

template <typename T>
__device__ void binary_contig(int op, const T* x, const T* z, T* y, long long n) {
    constexpr int V = 16 / sizeof(T);
    long long nv = n / V;
    const Vec16<T>* xv = reinterpret_cast<const Vec16<T>*>(x);
    const Vec16<T>* zv = reinterpret_cast<const Vec16<T>*>(z);
    Vec16<T>* yv = reinterpret_cast<Vec16<T>*>(y);
    for (long long i = grid_start(); i < nv; i += grid_step()) {
        Vec16<T> p = xv[i], q = zv[i], out;
        for (int j = 0; j < V; ++j) out.v[j] = from_f32<T>(apply_binary(op, to_f32(p.v[j]), to_f32(q.v[j])));
        yv[i] = out;
    }
    for (long long i = nv * V + grid_start(); i < n; i += grid_step())
        y[i] = from_f32<T>(apply_binary(op, to_f32(x[i]), to_f32(z[i])));
}

#define HEMI_ELEMENTWISE(SUFFIX, T)                                                                    \
    extern "C" __global__ void unary_##SUFFIX(int op, float a, float b, const T* x, Strided xs, T* y,   \
                                              long long n) {                                           \
        for (long long i = grid_start(); i < n; i += grid_step())                                      \
            y[i] = from_f32<T>(apply_unary(op, to_f32(x[strided_index(xs, i)]), a, b));                \
    }                                                                                                  \
    HEMI_KERNEL(unary_##SUFFIX)                                                                        \
    extern "C" __global__ void binary_##SUFFIX(int op, const T* x, Strided xs, const T* z, Strided zs,  \
                                               T* y, long long n) {                                    \
        for (long long i = grid_start(); i < n; i += grid_step())                                      \
            y[i] = from_f32<T>(apply_binary(op, to_f32(x[strided_index(xs, i)]),                       \
                                            to_f32(z[strided_index(zs, i)])));                          \
    }                                                                                                  \
    HEMI_KERNEL(binary_##SUFFIX)                                                                       \
    extern "C" __global__ void unary_vec_##SUFFIX(int op, float a, float b, const T* x, T* y, long long n) { \
        unary_contig<T>(op, a, b, x, y, n);                                                            \
    }                                                                                                  \
    HEMI_KERNEL(unary_vec_##SUFFIX)                                                                    \
    extern "C" __global__ void binary_vec_##SUFFIX(int op, const T* x, const T* z, T* y, long long n) {  \
        binary_contig<T>(op, x, z, y, n);                                                              \
    }                                                                                                  \
    HEMI_KERNEL(binary_vec_##SUFFIX)

HEMI_ELEMENTWISE(f32, float)
HEMI_ELEMENTWISE(f16, hemi_f16)
HEMI_ELEMENTWISE(bf16, hemi_bf16)

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
