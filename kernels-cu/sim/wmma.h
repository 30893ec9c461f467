// Emulation of the `nvcuda::wmma` API for the host emulator. CUDA leaves the distribution of
// fragment elements over lanes unspecified, so every lane here holds the whole tile: loads
// read the full tile, mma computes it with f32 accumulation in k order, and each lane stores
// its share of it. Element-wise use of `x[0 .. num_elements)` stays consistent.
#pragma once

#include <type_traits>

struct __half {
    unsigned short bits;
};
using half = __half;
struct __nv_bfloat16 {
    unsigned short bits;
};

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

inline float elem_to_f32(float v) { return v; }
inline float elem_to_f32(__half v) { return f16_to_f32(v.bits); }
inline float elem_to_f32(__nv_bfloat16 v) { return bf16_to_f32(v.bits); }
template <typename T>
inline T elem_from_f32(float v) {
    if constexpr (std::is_same_v<T, float>) return v;
    else if constexpr (std::is_same_v<T, __half>) return __half{f32_to_f16(v)};
    else return __nv_bfloat16{f32_to_bf16(v)};
}

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
    static constexpr int rows = std::is_same_v<Use, matrix_b> ? K : M;
    static constexpr int cols = std::is_same_v<Use, matrix_a> ? K : N;
    static constexpr int num_elements = rows * cols;
    T x[num_elements];  // row-major tile
};

template <typename Use, int M, int N, int K, typename T, typename L>
inline void fill_fragment(fragment<Use, M, N, K, T, L>& f, T v) {
    for (int i = 0; i < f.num_elements; ++i) f.x[i] = v;
}

template <typename Use, int M, int N, int K, typename T, typename L>
inline void load_tile(fragment<Use, M, N, K, T, L>& f, const T* p, unsigned ldm, bool row_major) {
    using F = fragment<Use, M, N, K, T, L>;
    for (int r = 0; r < F::rows; ++r)
        for (int c = 0; c < F::cols; ++c) f.x[r * F::cols + c] = row_major ? p[r * ldm + c] : p[c * ldm + r];
}

template <typename Use, int M, int N, int K, typename T, typename L>
inline void load_matrix_sync(fragment<Use, M, N, K, T, L>& f, const T* p, unsigned ldm) {
    load_tile(f, p, ldm, std::is_same_v<L, row_major>);
}

template <int M, int N, int K, typename T>
inline void load_matrix_sync(fragment<accumulator, M, N, K, T>& f, const T* p, unsigned ldm, layout_t l) {
    load_tile(f, p, ldm, l == mem_row_major);
}

/// Each lane writes its share of the tile (elements lane, lane + 32, ...), as the hardware
/// spreads a fragment over the warp: the whole tile is in memory once every lane has stored.
template <int M, int N, int K, typename T>
inline void store_matrix_sync(T* p, const fragment<accumulator, M, N, K, T>& f, unsigned ldm, layout_t l) {
    for (int e = static_cast<int>(hemi_sim::current()->linear % 32); e < M * N; e += 32) {
        int r = e / N, c = e % N;
        (l == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.x[e];
    }
}

template <int M, int N, int K, typename TA, typename LA, typename TB, typename LB, typename TC>
inline void mma_sync(fragment<accumulator, M, N, K, TC>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
                     const fragment<matrix_b, M, N, K, TB, LB>& b, const fragment<accumulator, M, N, K, TC>& c) {
    fragment<accumulator, M, N, K, TC> out;
    for (int r = 0; r < M; ++r)
        for (int col = 0; col < N; ++col) {
            float acc = elem_to_f32(c.x[r * N + col]);
            for (int k = 0; k < K; ++k) acc += elem_to_f32(a.x[r * K + k]) * elem_to_f32(b.x[k * N + col]);
            out.x[r * N + col] = elem_from_f32<TC>(acc);
        }
    d = out;
}

}  // namespace wmma
}  // namespace nvcuda
