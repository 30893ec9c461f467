// mma_tile.cuh — the Tensor-Core tile machinery shared by the GEMM (matmul.cu) and the
// implicit-GEMM convolutions (conv.cu): a 128x128 block tile of f32 accumulators computed by
// 4 warps (2x2) of 64x64 with mma.sync.m16n8k16 from ldmatrix fragments, fed K-tile by K-tile
// (32 deep) through a 3-stage cp.async pipeline in XOR-swizzled shared memory.
//
// A caller supplies only how one stage's two tiles are loaded — `load(kt, sa, sb)` issues the
// cp.async copies of K-tile `kt` (16-byte chunks, 8 elements each) into the slots given by
// `mma_chunk_*` — and what happens to the accumulators afterwards (`mma_for_each`). Each
// operand tile is either k-contiguous ([128 rows][32 k], chunks along k) or m/n-contiguous
// ([32 k][128 cols], chunks along the rows/cols; read with ldmatrix.trans), per operand.
#pragma once
#include "mutant.cuh"
#include "prim.cuh"

constexpr int MMA_BM = 128, MMA_BN = 128, MMA_BK = 32, MMA_STAGES = 3;
constexpr int MMA_TILE_ELEMS = MMA_BM * MMA_BK;  // one operand tile of one stage
constexpr int MMA_THREADS = 128;
constexpr int MMA_CHUNKS = MMA_TILE_ELEMS / 8;   // 16-byte chunks per operand tile

/// Swizzled offset of 16-byte chunk `c` of row `r` in a tile with 32-element (4-chunk) rows.
__device__ __forceinline__ int swz32(int r, int c) { return r * 32 + ((c ^ ((r >> 1) & 3)) * 8); }
/// Same for 128-element (16-chunk) rows.
__device__ __forceinline__ int swz128(int r, int c) { return r * 128 + ((c ^ (r & 7)) * 8); }

/// Chunk `q` (0 .. MMA_CHUNKS) of a k-contiguous tile: its row, its first k (0, 8, 16, 24)
/// within the K-tile, and its shared-memory slot.
__device__ __forceinline__ void mma_chunk_kcontig(int q, int& row, int& k, int& slot) {
    row = q / 4;
    k = (q % 4) * 8;
    slot = swz32(row, q % 4);
}

/// Chunk `q` of an m/n-contiguous tile: its k within the K-tile, its first column (a multiple
/// of 8) and its slot.
__device__ __forceinline__ void mma_chunk_mcontig(int q, int& k, int& col, int& slot) {
    k = q / 16;
    col = (q % 16) * 8;
    slot = swz128(k, q % 16);
}

/// One K-tile of the block's MMAs: ldmatrix fragments of this warp's 64x64 part from the
/// stage's tiles `ta` / `tb`, 2 k-steps of 4x8 mma.sync.m16n8k16 each.
template <bool BF16>
__device__ __forceinline__ void mma_tile_compute(float (&acc)[4][8][4], const unsigned short* ta,
                                                 const unsigned short* tb, int a_kcontig, int b_kcontig) {
    unsigned lane = prim::lane_id(), warp = threadIdx.x / 32, wm = warp / 2, wn = warp % 2;
    #pragma unroll
    for (int kk = 0; kk < MMA_BK / 16; ++kk) {
        unsigned af[4][4], bf[8][2];
        #pragma unroll
        for (int i = 0; i < 4; ++i) {
            if (a_kcontig) {
                int r = wm * 64 + i * 16 + lane % 16, c = kk * 2 + lane / 16;
                prim::ldmatrix<4>(af[i], &ta[swz32(r, c)]);
            } else {
                int kr = kk * 16 + lane % 8 + (lane / 16) * 8, cm = (wm * 64 + i * 16) / 8 + (lane / 8) % 2;
                prim::ldmatrix<4, true>(af[i], &ta[swz128(kr, cm)]);
            }
        }
        #pragma unroll
        for (int j = 0; j < 8; ++j) {
            if (b_kcontig) {
                int n = wn * 64 + j * 8 + lane % 8, c = kk * 2 + (lane / 8) % 2;
                prim::ldmatrix<2>(bf[j], &tb[swz32(n, c)]);
            } else {
                int kr = kk * 16 + lane % 16, cn = (wn * 64 + j * 8) / 8;
                prim::ldmatrix<2, true>(bf[j], &tb[swz128(kr, cn)]);
            }
        }
        #pragma unroll
        for (int i = 0; i < 4; ++i)
            #pragma unroll
            for (int j = 0; j < 8; ++j) {
                if (BF16) prim::mma_m16n8k16_bf16(acc[i][j], af[i], bf[j], acc[i][j]);
                else prim::mma_m16n8k16_f16(acc[i][j], af[i], bf[j], acc[i][j]);
            }
    }
}

/// The pipelined main loop over K-tiles `kt_begin .. kt_end`: zeroes `acc`, then keeps
/// MMA_STAGES − 1 tiles in flight (`load(kt, sa, sb)` issues a tile's cp.async copies) while
/// computing the oldest. Needs MMA_THREADS threads and `mma_smem_bytes()` of dynamic shared
/// memory. `MUT` compiles in one of the emulator's deliberate bugs (mutant.cuh).
template <bool BF16, Mutant MUT = Mutant::None, typename Load>
__device__ __forceinline__ void mma_mainloop(float (&acc)[4][8][4], long long kt_begin, long long kt_end,
                                             int a_kcontig, int b_kcontig, Load load) {
    unsigned short* smem = prim::dynamic_smem<unsigned short>();
    #pragma unroll
    for (int i = 0; i < 4; ++i)
        #pragma unroll
        for (int j = 0; j < 8; ++j)
            #pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;
    long long ktiles = kt_end - kt_begin;
    auto sa = [&](long long s) { return smem + (s % MMA_STAGES) * 2 * MMA_TILE_ELEMS; };
    auto sb = [&](long long s) { return smem + (s % MMA_STAGES) * 2 * MMA_TILE_ELEMS + MMA_TILE_ELEMS; };
    #pragma unroll
    for (int s = 0; s < MMA_STAGES - 1; ++s) {
        if (s < ktiles) load(kt_begin + s, sa(s), sb(s));
        prim::cp_async_commit();
    }
    for (long long kt = 0; kt < ktiles; ++kt) {
        if constexpr (MUT == Mutant::WrongAsyncGroup) prim::cp_async_wait<MMA_STAGES - 1>();
        else prim::cp_async_wait<MMA_STAGES - 2>();
        if constexpr (MUT != Mutant::DropBarrier) prim::sync_threads();
        long long next = kt + MMA_STAGES - 1;
        if (next < ktiles) load(kt_begin + next, sa(next), sb(next));
        prim::cp_async_commit();
        mma_tile_compute<BF16>(acc, sa(kt), sb(kt), a_kcontig, b_kcontig);
    }
    prim::cp_async_wait<0>();
}

/// Calls `f(row, col, v)` for every accumulator, with its row and column in the block tile.
template <typename F>
__device__ __forceinline__ void mma_for_each(const float (&acc)[4][8][4], F f) {
    unsigned lane = prim::lane_id(), warp = threadIdx.x / 32, wm = warp / 2, wn = warp % 2;
    unsigned gq = lane / 4, tq = lane % 4;
    #pragma unroll
    for (int i = 0; i < 4; ++i)
        #pragma unroll
        for (int j = 0; j < 8; ++j)
            #pragma unroll
            for (int e = 0; e < 4; ++e)
                f((int)(wm * 64 + i * 16 + gq + (e >= 2 ? 8 : 0)), (int)(wn * 64 + j * 8 + 2 * tq + e % 2),
                  acc[i][j][e]);
}
