// Host emulator of the CUDA execution model (DESIGN.md §5). Force-included (-include) when
// the kernel sources are compiled as C++ for the host: it supplies the CUDA keywords, the
// built-in index variables and the collectives. Each CUDA thread of a block is a fiber on one
// host thread; __syncthreads and warp collectives are rendezvous points of the scheduler.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <cfloat>
#include <utility>

#define HEMI_SIM 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
// One block runs at a time on each host thread, so static thread-local storage is exactly
// per-block shared memory.
#define __shared__ static thread_local
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
struct uint3 {
    unsigned x, y, z;
};

namespace hemi_sim {

/// Per-fiber state of one emulated CUDA thread.
struct ThreadCtx {
    uint3 thread_idx;
    unsigned linear;  // linear thread index within the block
};

/// The fiber now running on this host thread.
ThreadCtx* current();
/// Launch geometry of the running block.
const uint3& block_idx();
const dim3& block_dim();
const dim3& grid_dim();
/// Block barrier.
void syncthreads();
/// Dynamic shared memory of the running block (the launch's smem bytes, 16-byte aligned).
void* dynamic_smem();
/// Reports a kernel-side failure (trap); the launch returns it as an error.
[[noreturn]] void trap(const char* why);

/// Fails the launch unless `p` is `bytes`-aligned, as the GPU requires of `what` (vector loads
/// and stores, ldmatrix rows, cp.async operands): a misaligned access faults there.
void check_aligned(const void* p, unsigned bytes, const char* what);

/// `cp.async` of `bytes` (4, 8 or 16) from global `src` to shared `dst`; `valid` false means
/// src-size 0 (the destination becomes zeros). With the checkers on, the copy lands only when
/// a `cp_async_wait` covers its group; until then the destination reads as poisoned.
void cp_async(void* dst, const void* src, unsigned bytes, bool valid);
/// `cp.async.commit_group`: this thread's uncommitted copies become one group.
void cp_async_commit();
/// `cp.async.wait_group n`: every committed group but the newest `n` has landed.
void cp_async_wait(unsigned n);

/// Atomic read-modify-writes (the blocks of a launch may run on several host threads); each is
/// also seen by the checkers as a read and a write of `addr`.
float atomic_add(float* addr, float v);
int atomic_add(int* addr, int v);
unsigned atomic_add(unsigned* addr, unsigned v);
unsigned long long atomic_add(unsigned long long* addr, unsigned long long v);
float atomic_max_nonneg(float* addr, float v);
unsigned long long atomic_min_u64(unsigned long long* addr, unsigned long long v);

/// Most words one lane can deposit in one warp exchange.
constexpr unsigned kMaxExchangeWords = 16;

/// Warp rendezvous: every lane of `mask` deposits `count` words; returns all lanes' deposits,
/// lane-major (lane i's words at `[i * count, (i + 1) * count)`; lanes not in the mask read
/// 0). All lanes in the mask must call it with the same count.
const uint64_t* warp_exchange_words(unsigned mask, const uint64_t* words, unsigned count);

/// One word per lane: returns the 32 deposits.
inline const uint64_t* warp_exchange(unsigned mask, uint64_t value) { return warp_exchange_words(mask, &value, 1); }

/// Registers a kernel trampoline under a name (used by HEMI_KERNEL).
using Trampoline = void (*)(void** args);
struct Registrar {
    Registrar(const char* name, Trampoline t);
};

template <typename T>
T from_bits(uint64_t b) {
    T v;
    std::memcpy(&v, &b, sizeof(T));
    return v;
}
template <typename T>
uint64_t to_bits(T v) {
    uint64_t b = 0;
    std::memcpy(&b, &v, sizeof(T));
    return b;
}

template <typename... A, std::size_t... I>
void invoke_impl(void (*f)(A...), void** args, std::index_sequence<I...>) {
    f(*static_cast<A*>(args[I])...);
}
template <typename... A>
void invoke(void (*f)(A...), void** args) {
    invoke_impl(f, args, std::index_sequence_for<A...>{});
}

}  // namespace hemi_sim

#define threadIdx (hemi_sim::current()->thread_idx)
#define blockIdx (hemi_sim::block_idx())
#define blockDim (hemi_sim::block_dim())
#define gridDim (hemi_sim::grid_dim())
#define warpSize 32

inline void __syncthreads() { hemi_sim::syncthreads(); }
[[noreturn]] inline void __trap() { hemi_sim::trap("__trap() called"); }

// Registers `name` with the launcher: `HEMI_KERNEL(axpy)` after the kernel's definition.
#define HEMI_KERNEL(name)                                                                    \
    static void hemi_trampoline_##name(void** args) { hemi_sim::invoke(&name, args); }     \
    static hemi_sim::Registrar hemi_registrar_##name(#name, &hemi_trampoline_##name);
