// The conv family: 2-D convolution forward (fprop) and its input (dgrad) and weight (wgrad)
// gradients as implicit GEMMs over NCHW activations and KCRS (OIHW) filters — no im2col
// buffer: each GEMM operand element is computed from the convolution's indices as the tile is
// loaded.
//   fprop  M = N·P·Q  N = K      K = C·R·S   out y[n, k, p, q]
//   dgrad  M = N·H·W  N = C      K = K·R·S   out dx[n, c, h, w]
//   wgrad  M = K      N = C·R·S  K = N·P·Q   out dw[k, c, r, s]
// Any stride, padding and dilation; groups = 1 (the Rust side rejects others). Inputs f32, f16
// or bf16 (both operands one dtype), f32 accumulation, the output rounded once into the input
// dtype. This is the SIMT tier: 64x64 block tile, 16x16 threads with 4x4 outputs each,
// k-tile 16 (the layout of gemm_simt_f32). Split-K (for skinny GEMMs: wgrad's K = N·P·Q is
// huge while M·N is small): blockIdx.z takes one of `splits` equal K ranges and writes f32
// partials, which conv_splitk_reduce sums (in split order) and rounds once.
// Error bound: the GEMM bound with that K: |y − y64| ≤ K·2⁻²³·Σ|a||b| + u_out·|y64|.
#include "dtype.cuh"

/// `struct ConvArgs`, shared with `src/cuda/conv/launch.rs` (layout asserted on both sides).
struct ConvArgs {
    long long n, c, h, w;  // input
    long long k, r, s;     // filters
    long long p, q;        // output
    int stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
    unsigned long long a;    // fprop: x     dgrad: dy   wgrad: dy
    unsigned long long b;    // fprop: w     dgrad: w    wgrad: x
    unsigned long long out;  // fprop: y     dgrad: dx   wgrad: dw
    unsigned long long ws;   // split-K: f32 partials [splits][M][N] (0 when splits == 1)
    int splits;              // blockIdx.z splits the GEMM's K into this many ranges
    int pad;
};
static_assert(sizeof(ConvArgs) == 136, "ConvArgs layout");
static_assert(offsetof(ConvArgs, stride_h) == 72 && offsetof(ConvArgs, a) == 96, "ConvArgs layout");
static_assert(offsetof(ConvArgs, ws) == 120 && offsetof(ConvArgs, splits) == 128, "ConvArgs layout");

enum ConvMode { FPROP = 0, DGRAD = 1, WGRAD = 2 };

/// The implicit GEMM's (M, N, K) of a mode.
template <int MODE>
__device__ __forceinline__ void conv_gemm_dims(const ConvArgs& g, long long& m, long long& n, long long& k) {
    if (MODE == FPROP) {
        m = g.n * g.p * g.q;
        n = g.k;
        k = g.c * g.r * g.s;
    } else if (MODE == DGRAD) {
        m = g.n * g.h * g.w;
        n = g.c;
        k = g.k * g.r * g.s;
    } else {
        m = g.k;
        n = g.c * g.r * g.s;
        k = g.n * g.p * g.q;
    }
}

/// Input element x[n, c, p·sh − ph + r·dh, q·sw − pw + s·dw], or 0 in the padding.
template <typename T>
__device__ __forceinline__ float conv_input_at(const ConvArgs& g, const T* x, long long n, long long c, long long p,
                                               long long q, long long r, long long s) {
    long long y = p * g.stride_h - g.pad_h + r * g.dil_h, xx = q * g.stride_w - g.pad_w + s * g.dil_w;
    if (y < 0 || y >= g.h || xx < 0 || xx >= g.w) return 0.0f;
    return to_f32(x[((n * g.c + c) * g.h + y) * g.w + xx]);
}

/// (i / b, i % b) in 32-bit arithmetic (a GEMM index is below 2³¹: checked on the Rust side),
/// much cheaper on the GPU than a 64-bit division.
__device__ __forceinline__ void divmod(unsigned i, unsigned b, unsigned& q, unsigned& r) {
    q = i / b;
    r = i - q * b;
}

/// (outer, mid, inner) of index i over (·, mid, inner).
__device__ __forceinline__ void split3(long long i, long long mid, long long inner, long long& o, long long& m,
                                      long long& n) {
    unsigned q, r, q2, r2;
    divmod((unsigned)i, (unsigned)inner, q, r);
    divmod(q, (unsigned)mid, q2, r2);
    o = q2;
    m = r2;
    n = r;
}

/// Element (row, kk) of the implicit GEMM's A operand.
template <int MODE, typename T>
__device__ __forceinline__ float conv_load_a(const ConvArgs& g, long long row, long long kk) {
    const T* a = reinterpret_cast<const T*>(g.a);
    if (MODE == FPROP) {  // row = (n, p, q), kk = (c, r, s): the input under the filter tap
        long long n, p, q, c, r, s;
        split3(row, g.p, g.q, n, p, q);
        split3(kk, g.r, g.s, c, r, s);
        return conv_input_at(g, a, n, c, p, q, r, s);
    } else if (MODE == DGRAD) {  // row = (n, h, w), kk = (k, r, s): dy at the output tap r, s hits
        long long n, h, w, k, r, s;
        split3(row, g.h, g.w, n, h, w);
        split3(kk, g.r, g.s, k, r, s);
        long long ty = h + g.pad_h - r * g.dil_h, tx = w + g.pad_w - s * g.dil_w;
        if (ty < 0 || tx < 0 || ty % g.stride_h != 0 || tx % g.stride_w != 0) return 0.0f;
        long long p = ty / g.stride_h, q = tx / g.stride_w;
        if (p >= g.p || q >= g.q) return 0.0f;
        return to_f32(a[((n * g.k + k) * g.p + p) * g.q + q]);
    } else {  // row = k, kk = (n, p, q): dy
        long long n, p, q;
        split3(kk, g.p, g.q, n, p, q);
        return to_f32(a[((n * g.k + row) * g.p + p) * g.q + q]);
    }
}

/// Element (kk, col) of the implicit GEMM's B operand.
template <int MODE, typename T>
__device__ __forceinline__ float conv_load_b(const ConvArgs& g, long long kk, long long col) {
    const T* b = reinterpret_cast<const T*>(g.b);
    if (MODE == FPROP) return to_f32(b[col * g.c * g.r * g.s + kk]);  // w[col, (c, r, s)]
    if (MODE == DGRAD) {  // kk = (k, r, s), col = c: w[k, c, r, s]
        long long k, r, s;
        split3(kk, g.r, g.s, k, r, s);
        return to_f32(b[((k * g.c + col) * g.r + r) * g.s + s]);
    }
    // wgrad: kk = (n, p, q), col = (c, r, s): the input under tap (r, s) of output (p, q)
    long long n, p, q, c, r, s;
    split3(kk, g.p, g.q, n, p, q);
    split3(col, g.r, g.s, c, r, s);
    return conv_input_at(g, b, n, c, p, q, r, s);
}

/// Flat output index of GEMM element (row, col).
template <int MODE>
__device__ __forceinline__ long long conv_out_index(const ConvArgs& g, long long row, long long col) {
    unsigned n, rest;
    if (MODE == FPROP) {  // row = (n, p, q), col = k
        divmod((unsigned)row, (unsigned)(g.p * g.q), n, rest);
        return ((long long)n * g.k + col) * g.p * g.q + rest;
    }
    if (MODE == DGRAD) {  // row = (n, h, w), col = c
        divmod((unsigned)row, (unsigned)(g.h * g.w), n, rest);
        return ((long long)n * g.c + col) * g.h * g.w + rest;
    }
    return row * g.c * g.r * g.s + col;  // wgrad: row = k, col = (c, r, s)
}

constexpr int CONV_TILE = 64;
constexpr int CONV_K = 16;

template <int MODE, typename T>
__device__ void conv_simt(const ConvArgs& g) {
    __shared__ float sa[CONV_K][CONV_TILE + 1];
    __shared__ float sb[CONV_K][CONV_TILE + 1];
    long long gm, gn, gk;
    conv_gemm_dims<MODE>(g, gm, gn, gk);
    long long row0 = (long long)blockIdx.x * CONV_TILE, col0 = (long long)blockIdx.y * CONV_TILE;
    unsigned tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    // This block's K range: whole k-tiles, split as evenly as the tiles allow.
    long long ktiles = (gk + CONV_K - 1) / CONV_K, per = (ktiles + g.splits - 1) / g.splits;
    long long kbeg = blockIdx.z * per * CONV_K, kend = (blockIdx.z + 1) * per * CONV_K;
    if (kend > gk) kend = gk;
    float acc[4][4] = {};
    for (long long k0 = kbeg; k0 < kend; k0 += CONV_K) {
        for (unsigned i = threadIdx.x; i < CONV_K * CONV_TILE; i += 256) {
            unsigned kk = i / CONV_TILE, rr = i % CONV_TILE;
            long long r = row0 + rr, c = col0 + rr, k = k0 + kk;
            sa[kk][rr] = (r < gm && k < kend) ? conv_load_a<MODE, T>(g, r, k) : 0.0f;
            sb[kk][rr] = (c < gn && k < kend) ? conv_load_b<MODE, T>(g, k, c) : 0.0f;
        }
        prim::sync_threads();
        for (int kk = 0; kk < CONV_K; ++kk) {
            float av[4], bv[4];
            for (int i = 0; i < 4; ++i) av[i] = sa[kk][ty * 4 + i];
            for (int j = 0; j < 4; ++j) bv[j] = sb[kk][tx * 4 + j];
            for (int i = 0; i < 4; ++i)
                for (int j = 0; j < 4; ++j) acc[i][j] += av[i] * bv[j];
        }
        prim::sync_threads();
    }
    T* out = reinterpret_cast<T*>(g.out);
    float* ws = reinterpret_cast<float*>(g.ws) + (long long)blockIdx.z * gm * gn;
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) {
            long long r = row0 + ty * 4 + i, c = col0 + tx * 4 + j;
            if (r >= gm || c >= gn) continue;
            if (g.splits > 1) ws[r * gn + c] = acc[i][j];
            else out[conv_out_index<MODE>(g, r, c)] = from_f32<T>(acc[i][j]);
        }
}

/// Sums the split-K partials of every GEMM element in split order and rounds once into T.
template <int MODE, typename T>
__device__ void conv_splitk_reduce(const ConvArgs& g) {
    long long gm, gn, gk;
    conv_gemm_dims<MODE>(g, gm, gn, gk);
    const float* ws = reinterpret_cast<const float*>(g.ws);
    T* out = reinterpret_cast<T*>(g.out);
    for (long long i = grid_start(); i < gm * gn; i += grid_step()) {
        float s = 0.0f;
        for (int z = 0; z < g.splits; ++z) s += ws[z * gm * gn + i];
        out[conv_out_index<MODE>(g, i / gn, i % gn)] = from_f32<T>(s);
    }
}

#define HEMI_CONV(SUFFIX, T)                                                                          \
    extern "C" __global__ void __launch_bounds__(256) conv_fprop_##SUFFIX(ConvArgs g) {               \
        conv_simt<FPROP, T>(g);                                                                       \
    }                                                                                                 \
    HEMI_KERNEL(conv_fprop_##SUFFIX)                                                                  \
    extern "C" __global__ void __launch_bounds__(256) conv_dgrad_##SUFFIX(ConvArgs g) {               \
        conv_simt<DGRAD, T>(g);                                                                       \
    }                                                                                                 \
    HEMI_KERNEL(conv_dgrad_##SUFFIX)                                                                  \
    extern "C" __global__ void __launch_bounds__(256) conv_wgrad_##SUFFIX(ConvArgs g) {               \
        conv_simt<WGRAD, T>(g);                                                                       \
    }                                                                                                 \
    HEMI_KERNEL(conv_wgrad_##SUFFIX)                                                                  \
    extern "C" __global__ void conv_wgrad_reduce_##SUFFIX(ConvArgs g) { conv_splitk_reduce<WGRAD, T>(g); } \
    HEMI_KERNEL(conv_wgrad_reduce_##SUFFIX)

HEMI_CONV(f32, float)
HEMI_CONV(f16, hemi_f16)
HEMI_CONV(bf16, hemi_bf16)
