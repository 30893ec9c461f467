// The conv family: 2-D convolution forward (fprop) and its input (dgrad) and weight (wgrad)
// gradients as implicit GEMMs — no im2col buffer: each GEMM operand element is computed from
// the convolution's indices as the tile is loaded.
//   fprop  M = N·P·Q  N = K      K = C·R·S   out y[n, k, p, q]
//   dgrad  M = N·H·W  N = C      K = K·R·S   out dx[n, c, h, w]
//   wgrad  M = K      N = C·R·S  K = N·P·Q   out dw[k, c, r, s]
// Any stride, padding and dilation; groups = 1 (the Rust side rejects others). f32
// accumulation, the output rounded once into `out_dtype` (f32, f16 or bf16).
// Two tiers:
//   conv_{fprop,dgrad,wgrad}_T      SIMT, any dtype T, activations NCHW or NHWC and filters
//                                   KCRS or KRSC (`channels_last`); 64x64 block tile, 16x16
//                                   threads of 4x4 outputs, k-tile 16 (gemm_simt_f32's layout).
//   conv_mma_{fprop,dgrad,wgrad}_T  Tensor Cores (f16/bf16) on the tile machinery of
//                                   mma_tile.cuh, shared with gemm_mma: NHWC activations and
//                                   KRSC filters with C % 8 == 0 and K % 8 == 0, so every
//                                   16-byte cp.async chunk is 8 channels of one pixel (the
//                                   Rust side pads the stem's C = 3 to 8). The GEMM's K is
//                                   ordered (r, s, channel) so fprop's A and B tiles are
//                                   k-contiguous; dgrad's filter tile and both wgrad tiles
//                                   are m/n-contiguous. The output is the row-major [M][N]
//                                   GEMM result, which is exactly NHWC y / dx and KRSC dw.
// Split-K (skinny GEMMs: wgrad's K = N·P·Q is huge while M·N is small): blockIdx.z takes one of
// `splits` equal ranges of whole k-tiles and writes f32 partials [splits][M][N], which a
// conv_reduce_* kernel sums in split order and rounds once.
// Error bound: the GEMM bound with that K: |y − y64| ≤ K·2⁻²³·Σ|a||b| + u_out·|y64|.
#include "dtype.cuh"
#include "mma_tile.cuh"

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
    int channels_last;       // SIMT: NHWC activations / KRSC filters (else NCHW / KCRS)
    int out_dtype;           // 0 f32, 1 f16, 2 bf16
    int pad;
};
static_assert(sizeof(ConvArgs) == 144, "ConvArgs layout");
static_assert(offsetof(ConvArgs, channels_last) == 132 && offsetof(ConvArgs, out_dtype) == 136, "ConvArgs layout");
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

/// Storage index of activation element (n, c, y, x) of an [N, C, H, W] tensor (NCHW or NHWC).
__device__ __forceinline__ long long act_index(const ConvArgs& g, long long n, long long c, long long y, long long x,
                                               long long C, long long H, long long W) {
    return g.channels_last ? ((n * H + y) * W + x) * C + c : ((n * C + c) * H + y) * W + x;
}

/// Storage index of filter element (k, c, r, s) (KCRS or KRSC).
__device__ __forceinline__ long long filter_index(const ConvArgs& g, long long k, long long c, long long r,
                                                  long long s) {
    return g.channels_last ? ((k * g.r + r) * g.s + s) * g.c + c : ((k * g.c + c) * g.r + r) * g.s + s;
}

/// Input row y = p·sh − ph + r·dh and column x = q·sw − pw + s·dw under filter tap (r, s) of
/// output (p, q); false when they fall in the padding.
__device__ __forceinline__ bool conv_tap(const ConvArgs& g, long long p, long long q, long long r, long long s,
                                         long long& y, long long& x) {
    y = p * g.stride_h - g.pad_h + r * g.dil_h;
    x = q * g.stride_w - g.pad_w + s * g.dil_w;
    return y >= 0 && y < g.h && x >= 0 && x < g.w;
}

/// Input element x[n, c, p·sh − ph + r·dh, q·sw − pw + s·dw], or 0 in the padding.
template <typename T>
__device__ __forceinline__ float conv_input_at(const ConvArgs& g, const T* x, long long n, long long c, long long p,
                                               long long q, long long r, long long s) {
    long long y, xx;
    if (!conv_tap(g, p, q, r, s, y, xx)) return 0.0f;
    return to_f32(x[act_index(g, n, c, y, xx, g.c, g.h, g.w)]);
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
        return to_f32(a[act_index(g, n, k, p, q, g.k, g.p, g.q)]);
    } else {  // row = k, kk = (n, p, q): dy
        long long n, p, q;
        split3(kk, g.p, g.q, n, p, q);
        return to_f32(a[act_index(g, n, row, p, q, g.k, g.p, g.q)]);
    }
}

/// Element (kk, col) of the implicit GEMM's B operand.
template <int MODE, typename T>
__device__ __forceinline__ float conv_load_b(const ConvArgs& g, long long kk, long long col) {
    const T* b = reinterpret_cast<const T*>(g.b);
    if (MODE == FPROP) {  // kk = (c, r, s): w[col, c, r, s]
        long long c, r, s;
        split3(kk, g.r, g.s, c, r, s);
        return to_f32(b[filter_index(g, col, c, r, s)]);
    }
    if (MODE == DGRAD) {  // kk = (k, r, s), col = c: w[k, c, r, s]
        long long k, r, s;
        split3(kk, g.r, g.s, k, r, s);
        return to_f32(b[filter_index(g, k, col, r, s)]);
    }
    // wgrad: kk = (n, p, q), col = (c, r, s): the input under tap (r, s) of output (p, q)
    long long n, p, q, c, r, s;
    split3(kk, g.p, g.q, n, p, q);
    split3(col, g.r, g.s, c, r, s);
    return conv_input_at(g, b, n, c, p, q, r, s);
}

/// Storage index of the SIMT tier's GEMM element (row, col) in the output.
template <int MODE>
__device__ __forceinline__ long long conv_out_index(const ConvArgs& g, long long row, long long col) {
    if (MODE == WGRAD) {  // row = k, col = (c, r, s)
        long long c, r, s;
        split3(col, g.r, g.s, c, r, s);
        return filter_index(g, row, c, r, s);
    }
    unsigned n, rest;
    if (MODE == FPROP) {  // row = (n, p, q), col = k
        divmod((unsigned)row, (unsigned)(g.p * g.q), n, rest);
        return g.channels_last ? row * g.k + col : ((long long)n * g.k + col) * g.p * g.q + rest;
    }
    // dgrad: row = (n, h, w), col = c
    divmod((unsigned)row, (unsigned)(g.h * g.w), n, rest);
    return g.channels_last ? row * g.c + col : ((long long)n * g.c + col) * g.h * g.w + rest;
}

/// This block's range of k-tiles of `tile` elements under split-K: whole tiles, split as
/// evenly as the tiles allow (blockIdx.z of g.splits).
__device__ __forceinline__ void conv_split_range(const ConvArgs& g, long long gk, int tile, long long& kt0,
                                                 long long& kt1) {
    long long ktiles = (gk + tile - 1) / tile, per = (ktiles + g.splits - 1) / g.splits;
    kt0 = blockIdx.z * per;
    kt1 = kt0 + per < ktiles ? kt0 + per : ktiles;
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
    long long kt0, kt1;
    conv_split_range(g, gk, CONV_K, kt0, kt1);
    long long kbeg = kt0 * CONV_K, kend = kt1 * CONV_K < gk ? kt1 * CONV_K : gk;
    float acc[4][4] = {};
    for (long long k0 = kbeg; k0 < kend; k0 += CONV_K) {
        for (unsigned i = threadIdx.x; i < CONV_K * CONV_TILE; i += 256) {
            unsigned kk = i / CONV_TILE, rr = i % CONV_TILE;
            long long r = row0 + rr, c = col0 + rr, k = k0 + kk;
            sa[kk][rr] = (r < gm && k < kend) ? conv_load_a<MODE, T>(g, r, k) : 0.0f;
            sb[kk][rr] = (c < gn && k < kend) ? conv_load_b<MODE, T>(g, k, c) : 0.0f;
        }
        prim::sync_threads();
        #pragma unroll
        for (int kk = 0; kk < CONV_K; ++kk) {
            float av[4], bv[4];
            #pragma unroll
            for (int i = 0; i < 4; ++i) av[i] = sa[kk][ty * 4 + i];
            #pragma unroll
            for (int j = 0; j < 4; ++j) bv[j] = sb[kk][tx * 4 + j];
            #pragma unroll
            for (int i = 0; i < 4; ++i)
                #pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] += av[i] * bv[j];
        }
        prim::sync_threads();
    }
    float* ws = reinterpret_cast<float*>(g.ws) + (long long)blockIdx.z * gm * gn;
    #pragma unroll
    for (int i = 0; i < 4; ++i)
        #pragma unroll
        for (int j = 0; j < 4; ++j) {
            long long r = row0 + ty * 4 + i, c = col0 + tx * 4 + j;
            if (r >= gm || c >= gn) continue;
            if (g.splits > 1) ws[r * gn + c] = acc[i][j];
            else store_coded(g.out, g.out_dtype, conv_out_index<MODE>(g, r, c), acc[i][j]);
        }
}

/// Sums the split-K partials of every GEMM element in split order and rounds once into the
/// output dtype; `FLAT`: the output is the row-major [M][N] result (the Tensor-Core tier),
/// else at the SIMT tier's index of `MODE`.
template <int MODE, bool FLAT>
__device__ void conv_splitk_reduce(const ConvArgs& g) {
    long long gm, gn, gk;
    conv_gemm_dims<MODE>(g, gm, gn, gk);
    const float* ws = reinterpret_cast<const float*>(g.ws);
    for (long long i = grid_start(); i < gm * gn; i += grid_step()) {
        float s = 0.0f;
        for (int z = 0; z < g.splits; ++z) s += ws[z * gm * gn + i];
        store_coded(g.out, g.out_dtype, FLAT ? i : conv_out_index<MODE>(g, i / gn, i % gn), s);
    }
}

// ---- The Tensor-Core tier ----

/// Issues the cp.async copies of K-tile `kt` of both implicit-GEMM operands (NHWC / KRSC,
/// C % 8 == 0, K % 8 == 0; the GEMM's K ordered (r, s, channel)). A chunk outside the image
/// (padding, or a dgrad tap no output reaches) or outside the GEMM is zero-filled.
/// The Tensor-Core tier's input chunk: the 8 NHWC channels at output pixel `pix` = (n, p, q)
/// under filter tap `tap` = (r, s, c) (c a multiple of 8) — their address in `x` into `src`,
/// or false when the tap falls in the padding.
template <typename T>
__device__ __forceinline__ bool nhwc_input_chunk(const ConvArgs& g, const T* x, long long pix, long long tap,
                                                 const T*& src) {
    long long n, p, q, r, s, c, y, xx;
    split3(pix, g.p, g.q, n, p, q);
    split3(tap, g.s, g.c, r, s, c);
    if (!conv_tap(g, p, q, r, s, y, xx)) return false;
    src = x + ((n * g.h + y) * g.w + xx) * g.c + c;
    return true;
}

template <int MODE, typename T>
__device__ void conv_mma_load(const ConvArgs& g, long long gm, long long gn, long long gk, long long row0,
                              long long col0, long long kt, unsigned short* sa, unsigned short* sb) {
    const T* a = reinterpret_cast<const T*>(g.a);
    const T* b = reinterpret_cast<const T*>(g.b);
    long long k0 = kt * MMA_BK;
    for (int q = threadIdx.x; q < MMA_CHUNKS; q += blockDim.x) {
        int r, k, slot;
        const T* src = a;
        bool ok;
        if (MODE == FPROP) {  // A[(n, p, q)][(r, s, c)] = x[n, p·sh − ph + r·dh, q·sw − pw + s·dw, c]
            mma_chunk_kcontig(q, r, k, slot);
            long long m = row0 + r, kk = k0 + k;
            ok = m < gm && kk < gk && nhwc_input_chunk(g, a, m, kk, src);
        } else if (MODE == DGRAD) {  // A[(n, h, w)][(r, s, k)] = dy[n, (h + ph − r·dh)/sh, ·, k]
            mma_chunk_kcontig(q, r, k, slot);
            long long m = row0 + r, kk = k0 + k, n, h, w, fr, fs, ko;
            ok = m < gm && kk < gk;
            if (ok) {
                split3(m, g.h, g.w, n, h, w);
                split3(kk, g.s, g.k, fr, fs, ko);
                long long ty = h + g.pad_h - fr * g.dil_h, tx = w + g.pad_w - fs * g.dil_w;
                ok = ty >= 0 && tx >= 0 && ty % g.stride_h == 0 && tx % g.stride_w == 0 && ty / g.stride_h < g.p &&
                     tx / g.stride_w < g.q;
                src = a + ((n * g.p + ty / g.stride_h) * g.q + tx / g.stride_w) * g.k + ko;
            }
        } else {  // A[k][(n, p, q)] = dy[(n, p, q), k]: m-contiguous
            mma_chunk_mcontig(q, k, r, slot);
            long long kk = k0 + k, m = row0 + r;
            ok = kk < gk && m < gm;
            src = a + kk * g.k + m;
        }
        prim::cp_async_16(&sa[slot], ok ? src : a, ok);
        src = b;
        if (MODE == FPROP) {  // B[k][(r, s, c)] = w[k, r, s, c]: a KRSC filter row, k-contiguous
            mma_chunk_kcontig(q, r, k, slot);
            long long n = col0 + r, kk = k0 + k;
            ok = n < gn && kk < gk;
            src = b + n * gk + kk;
        } else if (MODE == DGRAD) {  // B[(r, s, k)][c] = w[k, r, s, c]: n-contiguous
            mma_chunk_mcontig(q, k, r, slot);
            long long kk = k0 + k, n = col0 + r, fr, fs, ko;
            ok = kk < gk && n < gn;
            if (ok) {
                split3(kk, g.s, g.k, fr, fs, ko);
                src = b + ((ko * g.r + fr) * g.s + fs) * g.c + n;
            }
        } else {  // B[(n, p, q)][(r, s, c)] = x[n, p·sh − ph + r·dh, q·sw − pw + s·dw, c]
            mma_chunk_mcontig(q, k, r, slot);
            long long kk = k0 + k, col = col0 + r;
            ok = kk < gk && col < gn && nhwc_input_chunk(g, b, kk, col, src);
        }
        prim::cp_async_16(&sb[slot], ok ? src : b, ok);
    }
}

template <int MODE, typename T, bool BF16>
__device__ void conv_mma(const ConvArgs& g) {
    long long gm, gn, gk;
    conv_gemm_dims<MODE>(g, gm, gn, gk);
    long long row0 = (long long)blockIdx.x * MMA_BM, col0 = (long long)blockIdx.y * MMA_BN;
    long long kt0, kt1;
    conv_split_range(g, gk, MMA_BK, kt0, kt1);
    float acc[4][8][4];
    auto load = [&](long long kt, unsigned short* sa, unsigned short* sb) {
        conv_mma_load<MODE, T>(g, gm, gn, gk, row0, col0, kt, sa, sb);
    };
    mma_mainloop<BF16>(acc, kt0, kt1, MODE != WGRAD, MODE == FPROP, load);
    float* ws = reinterpret_cast<float*>(g.ws) + (long long)blockIdx.z * gm * gn;
    mma_for_each(acc, [&](int r, int c, float v) {
        long long row = row0 + r, col = col0 + c;
        if (row >= gm || col >= gn) return;
        if (g.splits > 1) ws[row * gn + col] = v;
        else store_coded(g.out, g.out_dtype, row * gn + col, v);
    });
}

/// x [n][c][s] (NCHW-like; `src_cl`: [n][s][c]) into dst [n][s][cp], zero in channels c..cp:
/// the Tensor-Core tier's NHWC operands with channels padded to a multiple of 8.
template <typename T>
__device__ void conv_pack(const T* src, T* dst, long long n, long long c, long long s, long long cp, int src_cl) {
    for (long long i = grid_start(); i < n * s * cp; i += grid_step()) {
        long long ch = i % cp, pix = i / cp, img = pix / s, si = pix % s;
        T v = from_f32<T>(0.0f);
        if (ch < c) v = src[src_cl ? pix * c + ch : (img * c + ch) * s + si];
        dst[i] = v;
    }
}

/// The inverse: src [n][s][cp] into dst [n][c][s] (`dst_cl`: [n][s][c]), dropping channels c..cp.
template <typename T>
__device__ void conv_unpack(const T* src, T* dst, long long n, long long c, long long s, long long cp, int dst_cl) {
    for (long long i = grid_start(); i < n * s * c; i += grid_step()) {
        long long img, ch, si;
        if (dst_cl) {
            ch = i % c;
            si = i / c % s;
            img = i / (c * s);
        } else {
            si = i % s;
            ch = i / s % c;
            img = i / (s * c);
        }
        dst[i] = src[(img * s + si) * cp + ch];
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
    extern "C" __global__ void conv_pack_##SUFFIX(const T* src, T* dst, long long n, long long c, long long s, \
                                                  long long cp, int src_cl) {                         \
        conv_pack<T>(src, dst, n, c, s, cp, src_cl);                                                  \
    }                                                                                                 \
    HEMI_KERNEL(conv_pack_##SUFFIX)                                                                   \
    extern "C" __global__ void conv_unpack_##SUFFIX(const T* src, T* dst, long long n, long long c,   \
                                                    long long s, long long cp, int dst_cl) {          \
        conv_unpack<T>(src, dst, n, c, s, cp, dst_cl);                                                \
    }                                                                                                 \
    HEMI_KERNEL(conv_unpack_##SUFFIX)

HEMI_CONV(f32, float)
HEMI_CONV(f16, hemi_f16)
HEMI_CONV(bf16, hemi_bf16)

#define HEMI_CONV_MMA(SUFFIX, T, BF16)                                                                   \
    extern "C" __global__ void __launch_bounds__(MMA_THREADS) conv_mma_fprop_##SUFFIX(ConvArgs g) {      \
        conv_mma<FPROP, T, BF16>(g);                                                                     \
    }                                                                                                    \
    HEMI_KERNEL(conv_mma_fprop_##SUFFIX)                                                                 \
    extern "C" __global__ void __launch_bounds__(MMA_THREADS) conv_mma_dgrad_##SUFFIX(ConvArgs g) {      \
        conv_mma<DGRAD, T, BF16>(g);                                                                     \
    }                                                                                                    \
    HEMI_KERNEL(conv_mma_dgrad_##SUFFIX)                                                                 \
    extern "C" __global__ void __launch_bounds__(MMA_THREADS) conv_mma_wgrad_##SUFFIX(ConvArgs g) {      \
        conv_mma<WGRAD, T, BF16>(g);                                                                     \
    }                                                                                                    \
    HEMI_KERNEL(conv_mma_wgrad_##SUFFIX)

HEMI_CONV_MMA(f16, hemi_f16, false)
HEMI_CONV_MMA(bf16, hemi_bf16, true)

#define HEMI_CONV_REDUCE(MODE_NAME, MODE)                                                                   \
    extern "C" __global__ void conv_reduce_##MODE_NAME(ConvArgs g) { conv_splitk_reduce<MODE, false>(g); }  \
    HEMI_KERNEL(conv_reduce_##MODE_NAME)                                                                    \
    extern "C" __global__ void conv_mma_reduce_##MODE_NAME(ConvArgs g) { conv_splitk_reduce<MODE, true>(g); } \
    HEMI_KERNEL(conv_mma_reduce_##MODE_NAME)

HEMI_CONV_REDUCE(fprop, FPROP)
HEMI_CONV_REDUCE(dgrad, DGRAD)
HEMI_CONV_REDUCE(wgrad, WGRAD)
