// The matmul family (GEMM kernels): C = alpha · A·B + beta · C_in + bias, batched with strides, any M, N, K.
//   gemm_simt_f32      (iii) tiled fp32 SIMT baseline
//   gemm_wmma_{f16,bf16} (i) the nvcuda::wmma Tensor-Core kernel: simple, portable reference
//   gemm_mma_{f16,bf16}  (ii) mma.sync + ldmatrix + cp.async (mma_tile.cuh): the fast path
// Operands are described by element strides (batch, row, col), so NN, NT and TN layouts are
// the same kernel; edges are predicated (zero-filled tiles), K needs no multiple of the tile.
// Accumulation is f32; the output is rounded once into its dtype (0 f32, 1 f16, 2 bf16).
#include "dtype.cuh"
#include "mma_tile.cuh"

/// A batched matrix operand: address and element strides.
struct Operand {
    unsigned long long ptr;
    long long batch_stride;
    long long row_stride;
    long long col_stride;
};

/// Problem size, scalars and epilogue inputs shared by every GEMM kernel.
struct GemmArgs {
    long long m, n, k;
    float alpha, beta;
    Operand a, b;
    Operand c_in;            // read when beta != 0 (dtype of the output)
    unsigned long long bias;  // f32 [n], or 0
    Operand out;
    int out_dtype;
    int pad;
};
// Shared with `Operand` / `GemmArgs` in src/cuda/matmul/launch.rs (asserted there too).
static_assert(sizeof(Operand) == 32 && offsetof(Operand, col_stride) == 24, "Operand layout");
static_assert(sizeof(GemmArgs) == 176 && offsetof(GemmArgs, alpha) == 24, "GemmArgs layout");
static_assert(offsetof(GemmArgs, a) == 32 && offsetof(GemmArgs, bias) == 128, "GemmArgs layout");
static_assert(offsetof(GemmArgs, out) == 136 && offsetof(GemmArgs, out_dtype) == 168, "GemmArgs layout");

/// The epilogue of one output element (row, col) of batch `z`.
__device__ __forceinline__ void epilogue(const GemmArgs& g, long long z, long long row, long long col, float acc) {
    float v = g.alpha * acc;
    if (g.beta != 0.0f) {
        long long ci = z * g.c_in.batch_stride + row * g.c_in.row_stride + col * g.c_in.col_stride;
        v += g.beta * load_coded(g.c_in.ptr, g.out_dtype, ci);
    }
    if (g.bias) v += reinterpret_cast<const float*>(g.bias)[col];
    long long oi = z * g.out.batch_stride + row * g.out.row_stride + col * g.out.col_stride;
    store_coded(g.out.ptr, g.out_dtype, oi, v);
}

template <typename T>
__device__ __forceinline__ float load_operand(const Operand& o, long long z, long long r, long long c) {
    return to_f32(reinterpret_cast<const T*>(o.ptr)[z * o.batch_stride + r * o.row_stride + c * o.col_stride]);
}

// ---- (iii) SIMT fp32: 64x64 block tile, 16x16 threads with 4x4 outputs each, k-tile 16 ----

constexpr int SIMT_TILE = 64;
constexpr int SIMT_K = 16;

extern "C" __global__ void __launch_bounds__(256) gemm_simt_f32(GemmArgs g) {
    __shared__ float sa[SIMT_K][SIMT_TILE + 1];
    __shared__ float sb[SIMT_K][SIMT_TILE + 1];
    long long z = blockIdx.z;
    long long row0 = (long long)blockIdx.y * SIMT_TILE, col0 = (long long)blockIdx.x * SIMT_TILE;
    unsigned tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    float acc[4][4] = {};
    for (long long k0 = 0; k0 < g.k; k0 += SIMT_K) {
        for (unsigned i = threadIdx.x; i < SIMT_K * SIMT_TILE; i += 256) {
            unsigned kk = i / SIMT_TILE, rr = i % SIMT_TILE;
            long long r = row0 + rr, c = col0 + rr, k = k0 + kk;
            sa[kk][rr] = (r < g.m && k < g.k) ? load_operand<float>(g.a, z, r, k) : 0.0f;
            sb[kk][rr] = (c < g.n && k < g.k) ? load_operand<float>(g.b, z, k, c) : 0.0f;
        }
        prim::sync_threads();
        for (int kk = 0; kk < SIMT_K; ++kk) {
            float av[4], bv[4];
            for (int i = 0; i < 4; ++i) av[i] = sa[kk][ty * 4 + i];
            for (int j = 0; j < 4; ++j) bv[j] = sb[kk][tx * 4 + j];
            for (int i = 0; i < 4; ++i)
                for (int j = 0; j < 4; ++j) acc[i][j] += av[i] * bv[j];
        }
        prim::sync_threads();
    }
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) {
            long long r = row0 + ty * 4 + i, c = col0 + tx * 4 + j;
            if (r < g.m && c < g.n) epilogue(g, z, r, c, acc[i][j]);
        }
}
HEMI_KERNEL(gemm_simt_f32)

// ---- (i) wmma: 64x64 block tile, 4 warps of 32x32 (2x2 fragments of 16x16x16), k-tile 16 ----

constexpr int WMMA_TILE = 64;
constexpr int WMMA_K = 16;

template <typename T, typename HT>
__device__ void gemm_wmma_impl(const GemmArgs& g) {
    using namespace nvcuda;
    __shared__ __align__(32) HT sa[WMMA_TILE * WMMA_K];  // row-major 64 x 16
    __shared__ __align__(32) HT sb[WMMA_K * WMMA_TILE];  // row-major 16 x 64
    __shared__ __align__(32) float sc[4][32 * 32];      // per-warp accumulator staging
    long long z = blockIdx.z;
    long long row0 = (long long)blockIdx.y * WMMA_TILE, col0 = (long long)blockIdx.x * WMMA_TILE;
    unsigned warp = threadIdx.x / 32, wr = warp / 2, wc = warp % 2;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
    for (long long k0 = 0; k0 < g.k; k0 += WMMA_K) {
        for (unsigned i = threadIdx.x; i < WMMA_TILE * WMMA_K; i += blockDim.x) {
            unsigned rr = i / WMMA_K, kk = i % WMMA_K;
            long long r = row0 + rr, k = k0 + kk;
            T av = (r < g.m && k < g.k) ? reinterpret_cast<const T*>(g.a.ptr)[z * g.a.batch_stride + r * g.a.row_stride + k * g.a.col_stride] : T{0};
            sa[i] = *reinterpret_cast<const HT*>(&av);
            unsigned kb = i / WMMA_TILE, cc = i % WMMA_TILE;
            long long c = col0 + cc, kbb = k0 + kb;
            T bv = (c < g.n && kbb < g.k) ? reinterpret_cast<const T*>(g.b.ptr)[z * g.b.batch_stride + kbb * g.b.row_stride + c * g.b.col_stride] : T{0};
            sb[i] = *reinterpret_cast<const HT*>(&bv);
        }
        prim::sync_threads();
        wmma::fragment<wmma::matrix_a, 16, 16, 16, HT, wmma::row_major> fa[2];
        wmma::fragment<wmma::matrix_b, 16, 16, 16, HT, wmma::row_major> fb[2];
        for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], &sa[(wr * 32 + i * 16) * WMMA_K], WMMA_K);
        for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], &sb[wc * 32 + j * 16], WMMA_TILE);
        for (int i = 0; i < 2; ++i)
            for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
        prim::sync_threads();
    }
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 2; ++j)
            wmma::store_matrix_sync(&sc[warp][(i * 16) * 32 + j * 16], acc[i][j], 32, wmma::mem_row_major);
    prim::sync_threads();
    for (unsigned e = prim::lane_id(); e < 32 * 32; e += 32) {
        long long r = row0 + wr * 32 + e / 32, c = col0 + wc * 32 + e % 32;
        if (r < g.m && c < g.n) epilogue(g, z, r, c, sc[warp][e]);
    }
}

extern "C" __global__ void __launch_bounds__(128) gemm_wmma_f16(GemmArgs g) { gemm_wmma_impl<hemi_f16, half>(g); }
HEMI_KERNEL(gemm_wmma_f16)
extern "C" __global__ void __launch_bounds__(128) gemm_wmma_bf16(GemmArgs g) {
    gemm_wmma_impl<hemi_bf16, __nv_bfloat16>(g);
}
HEMI_KERNEL(gemm_wmma_bf16)

// ---- (ii) the fast path: mma.sync.m16n8k16 + ldmatrix + 3-stage cp.async pipeline ----
// The shared tile machinery of mma_tile.cuh (block tile 128x128x32, 4 warps of 64x64,
// XOR-swizzled shared memory) with grouped block rasterization for L2 reuse. Preconditions
// (checked by the Rust dispatcher): A k-contiguous (row-major) or m-contiguous (transposed,
// "TN": then M % 8 == 0), B k-contiguous ("NT") or n-contiguous ("NN": then N % 8 == 0); K a
// multiple of 8; 16-byte aligned rows and bases.

/// Issues the cp.async copies of the K-tile at `k0` of both operands of batch `z`.
template <typename T>
__device__ void mma_load_stage(const GemmArgs& g, long long z, long long row0, long long col0, long long k0,
                               unsigned short* sa, unsigned short* sb, int a_kcontig, int b_kcontig) {
    const T* a = reinterpret_cast<const T*>(g.a.ptr) + z * g.a.batch_stride;
    const T* b = reinterpret_cast<const T*>(g.b.ptr) + z * g.b.batch_stride;
    for (int q = threadIdx.x; q < MMA_CHUNKS; q += blockDim.x) {
        int r, k, slot;
        if (a_kcontig) {
            mma_chunk_kcontig(q, r, k, slot);
            long long row = row0 + r, kk = k0 + k;
            bool ok = row < g.m && kk < g.k;
            prim::cp_async_16(&sa[slot], ok ? a + row * g.a.row_stride + kk : a, ok);
        } else {
            mma_chunk_mcontig(q, k, r, slot);
            long long kk = k0 + k, m = row0 + r;
            bool ok = kk < g.k && m < g.m;
            prim::cp_async_16(&sa[slot], ok ? a + kk * g.a.col_stride + m : a, ok);
        }
        if (b_kcontig) {
            mma_chunk_kcontig(q, r, k, slot);
            long long n = col0 + r, kk = k0 + k;
            bool ok = n < g.n && kk < g.k;
            prim::cp_async_16(&sb[slot], ok ? b + n * g.b.col_stride + kk : b, ok);
        } else {
            mma_chunk_mcontig(q, k, r, slot);
            long long kk = k0 + k, n = col0 + r;
            bool ok = kk < g.k && n < g.n;
            prim::cp_async_16(&sb[slot], ok ? b + kk * g.b.row_stride + n : b, ok);
        }
    }
}

template <typename T, bool BF16, Mutant MUT = Mutant::None>
__device__ void gemm_mma_impl(const GemmArgs& g, int a_kcontig, int b_kcontig) {
    long long z = blockIdx.z;
    // Grouped rasterization: 8 block-rows share their B tiles in L2.
    long long tiles_m = (g.m + MMA_BM - 1) / MMA_BM, tiles_n = (g.n + MMA_BN - 1) / MMA_BN;
    long long pid = blockIdx.x, per_group = 8 * tiles_n, group = pid / per_group;
    long long first_m = group * 8, gsize = tiles_m - first_m < 8 ? tiles_m - first_m : 8;
    long long bm = first_m + (pid % per_group) % gsize, bn = (pid % per_group) / gsize;
    long long row0 = bm * MMA_BM, col0 = bn * MMA_BN;
    float acc[4][8][4];
    auto load = [&](long long kt, unsigned short* sa, unsigned short* sb) {
        mma_load_stage<T>(g, z, row0, col0, kt * MMA_BK, sa, sb, a_kcontig, b_kcontig);
    };
    mma_mainloop<BF16, MUT>(acc, 0, (g.k + MMA_BK - 1) / MMA_BK, a_kcontig, b_kcontig, load);
    mma_for_each(acc, [&](int r, int c, float v) {
        if (row0 + r < g.m && col0 + c < g.n) epilogue(g, z, row0 + r, col0 + c, v);
    });
}

extern "C" __global__ void __launch_bounds__(128) gemm_mma_f16(GemmArgs g, int a_kcontig, int b_kcontig) {
    gemm_mma_impl<hemi_f16, false>(g, a_kcontig, b_kcontig);
}
HEMI_KERNEL(gemm_mma_f16)
extern "C" __global__ void __launch_bounds__(128) gemm_mma_bf16(GemmArgs g, int a_kcontig, int b_kcontig) {
    gemm_mma_impl<hemi_bf16, true>(g, a_kcontig, b_kcontig);
}
HEMI_KERNEL(gemm_mma_bf16)

#ifdef HEMI_SIM
extern "C" __global__ void gemm_mma_f16__drop_barrier(GemmArgs g, int a_kcontig, int b_kcontig) {
    gemm_mma_impl<hemi_f16, false, Mutant::DropBarrier>(g, a_kcontig, b_kcontig);
}
HEMI_MUTANT_KERNEL(gemm_mma_f16__drop_barrier)
extern "C" __global__ void gemm_mma_f16__wrong_async_group(GemmArgs g, int a_kcontig, int b_kcontig) {
    gemm_mma_impl<hemi_f16, false, Mutant::WrongAsyncGroup>(g, a_kcontig, b_kcontig);
}
HEMI_MUTANT_KERNEL(gemm_mma_f16__wrong_async_group)
#endif
