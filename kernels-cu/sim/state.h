// Internal state of the host emulator, shared by the scheduler (sim.cpp) and the checkers
// (check.cpp). Not included by kernel sources: they see only sim.h.
#pragma once

#include "sim.h"

#include <ucontext.h>

#include <string>
#include <vector>

namespace hemi_sim {

enum class State { Runnable, AtBarrier, AtWarp, Done };

constexpr std::size_t kStackBytes = 256 * 1024;

/// One `cp.async` copy issued by a thread that has not landed in shared memory yet. The source
/// is read at issue time (the hardware may read it any time before the wait; kernels may not
/// rely on either), the destination is written when a `cp.async.wait_group` covers its group.
struct AsyncCopy {
    unsigned char* dst;
    unsigned char data[16];
    unsigned bytes;
    bool zero_fill;               // src-size 0: the destination becomes zeros
    unsigned long long group;     // 0 while uncommitted, else the commit it belongs to (1, 2, ...)
    const void* pc;               // where it was issued (for reports)
};

/// A suspended execution context. On x86-64 a saved stack pointer (the callee-saved registers,
/// MXCSR and the x87 control word sit on that stack): switching is a dozen instructions and no
/// system call. Elsewhere a ucontext (whose switch also saves the signal mask, a system call).
#if defined(__x86_64__)
struct Context {
    void* sp = nullptr;
};
#else
struct Context {
    ucontext_t uc{};
};
#endif

/// Prepares `c` to run `entry` (which must never return) on `stack`.
void context_init(Context& c, void* stack, std::size_t bytes, void (*entry)());
/// Saves the running context into `from` and resumes `to`.
void context_switch(Context& from, Context& to);

/// Per-fiber state of one emulated CUDA thread.
struct Fiber {
    ThreadCtx ctx{};
    Context uc{};
    State state = State::Runnable;
    void* stack = nullptr;
    unsigned warp_mask = 0;
    unsigned warp_count = 0;
    uint64_t warp_words[kMaxExchangeWords] = {};
    uint64_t warp_result[32 * kMaxExchangeWords] = {};
    const void* barrier_pc = nullptr;   // the __syncthreads it waits at (while AtBarrier)
    std::vector<AsyncCopy> async;       // in issue order
    unsigned long long committed = 0;   // cp.async groups committed so far
};

/// Run-time configuration, read once from the environment (see README, "Testing").
struct Config {
    bool checks = true;               // HEMI_SIM_CHECKS=0 turns the checkers off
    unsigned long long shake = 0;     // HEMI_SIM_SHAKE=<seed>: randomized thread and block order
    bool shake_set = false;           // a seed was given (even 0): blocks run on one host thread
};
const Config& config();

/// One kernel launch on this host thread.
struct Launch {
    const char* name = "";
    std::vector<Fiber>* fibers = nullptr;
    Fiber* running = nullptr;
    Context sched{};
    const void* sched_stack = nullptr;
    std::size_t sched_stack_size = 0;
    uint3 bidx{};
    dim3 bdim{}, gdim{};
    unsigned nthreads = 0;
    unsigned char* smem = nullptr;
    unsigned smem_bytes = 0;
    Trampoline kernel = nullptr;
    void** args = nullptr;
    std::string error;
    bool checks = false;
    unsigned long long shake = 0;    // schedule shaker seed (0: program order)
    uint32_t block_serial = 0;       // unique per block run on this host thread (never 0)
    uint32_t barrier_epoch = 0;      // completed __syncthreads of the running block
    uint32_t warp_sync[32] = {};     // completed warp collectives, per warp of the block
};

extern thread_local Launch* tl_launch;

/// Ends the running fiber and fails the launch with `msg` (prefixed with the kernel name and
/// block by the launcher).
[[noreturn]] void fail(const std::string& msg);

/// "thread 37 (warp 1, lane 5)".
std::string describe_thread(unsigned linear);

// ---- checkers (check.cpp) ----

/// " at kernels-cu/matmul.cu:231 (gemm_mma_impl) <- ...", or a note that there is no debug
/// information.
std::string source_location(const void* pc);

/// A block is about to start: new generation for the shadow state, dynamic shared memory
/// poisoned.
void checks_begin_block(Launch* l);
/// Fiber `f` returned from the kernel: copies it issued and never waited for are an error.
void checks_thread_exit(Fiber* f);

}  // namespace hemi_sim
