// The elementwise family: unary and broadcasting binary ops. One thread per output element in
// a grid-stride loop; compute in f32, one rounding at the store.
#include "dtype.cuh"
#include "mutant.cuh"

// Op codes from the one table in ops.def (build.rs generates the Rust side from it).
#define HEMI_UNARY(name) U_##name,
#define HEMI_BINARY(name)
enum UnaryCode {
#include "ops.def"
};
#undef HEMI_UNARY
#undef HEMI_BINARY
#define HEMI_UNARY(name)
#define HEMI_BINARY(name) B_##name,
enum BinaryCode {
#include "ops.def"
};
#undef HEMI_UNARY
#undef HEMI_BINARY

__device__ __forceinline__ float apply_unary(int op, float x, float a, float b) {
    switch (op) {
        case U_neg: return -x;
        case U_exp: return expf(x);
        case U_log: return logf(x);
        case U_sqrt: return sqrtf(x);
        case U_rsqrt: return 1.0f / sqrtf(x);
        case U_abs: return fabsf(x);
        case U_square: return x * x;
        case U_recip: return 1.0f / x;
        case U_relu: return (x != x || x > 0.0f) ? x : 0.0f;
        case U_step: return x > 0.0f ? 1.0f : 0.0f;
        case U_sign: return x != x ? x : (x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : 0.0f));
        case U_affine: return x * a + b;
        case U_powf: return powf(x, a);
        default: return NAN;  // no such op: ops.def and the Rust table are generated together
    }
}

__device__ __forceinline__ float apply_binary(int op, float x, float y) {
    switch (op) {
        case B_add: return x + y;
        case B_sub: return x - y;
        case B_mul: return x * y;
        case B_div: return x / y;
        case B_maximum: return (x != x || y != y) ? (x + y) : (x > y ? x : y);
        case B_minimum: return (x != x || y != y) ? (x + y) : (x < y ? x : y);
        case B_eq: return x == y ? 1.0f : 0.0f;
        default: return NAN;
    }
}

/// 16 bytes of elements, for vectorized loads and stores.
template <typename T>
struct __align__(16) Vec16 {
    T v[16 / sizeof(T)];
};

/// Contiguous, 16-byte-aligned operands: 16-byte vector accesses, scalar tail.
template <typename T, Mutant MUT = Mutant::None>
__device__ void unary_contig(int op, float a, float b, const T* x, T* y, long long n) {
    constexpr int V = 16 / sizeof(T);
    long long nv = n / V;
    const Vec16<T>* xv = reinterpret_cast<const Vec16<T>*>(x);
    Vec16<T>* yv = reinterpret_cast<Vec16<T>*>(y);
    for (long long i = grid_start(); i < nv; i += grid_step()) {
        const Vec16<T>* src = xv + i;
        if constexpr (MUT == Mutant::MisalignedVector)
            if (i == 0) src = reinterpret_cast<const Vec16<T>*>(reinterpret_cast<const char*>(src) + 4);
        Vec16<T> in = prim::load_vector(src), out;
        for (int j = 0; j < V; ++j) out.v[j] = from_f32<T>(apply_unary(op, to_f32(in.v[j]), a, b));
        prim::store_vector(yv + i, out);
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
        Vec16<T> p = prim::load_vector(xv + i), q = prim::load_vector(zv + i), out;
        for (int j = 0; j < V; ++j) out.v[j] = from_f32<T>(apply_binary(op, to_f32(p.v[j]), to_f32(q.v[j])));
        prim::store_vector(yv + i, out);
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

#ifdef HEMI_SIM
extern "C" __global__ void unary_vec_f32__misaligned_vector(int op, float a, float b, const float* x, float* y,
                                                            long long n) {
    unary_contig<float, Mutant::MisalignedVector>(op, a, b, x, y, n);
}
HEMI_MUTANT_KERNEL(unary_vec_f32__misaligned_vector)
#endif
