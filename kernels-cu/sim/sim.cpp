// The emulator's scheduler: blocks run one after another on the launching host thread; the
// threads of a block are ucontext fibers switched at __syncthreads and warp collectives. With
// HEMI_SIM_SHAKE=<seed> the blocks of a launch, and the runnable threads of a block between two
// scheduling points, run in seeded random orders. The checkers live in check.cpp.
#include "state.h"

#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <unordered_map>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define HEMI_ASAN 1
#endif

#if defined(__x86_64__)
// hemi_sim_switch(void** save_sp, void* load_sp): pushes the callee-saved registers, MXCSR and
// the x87 control word, stores the stack pointer in *save_sp, loads load_sp, pops the same and
// returns into the other context.
asm(R"(
    .text
    .globl hemi_sim_switch
    .type hemi_sim_switch, @function
hemi_sim_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size hemi_sim_switch, .-hemi_sim_switch
    .section .note.GNU-stack,"",@progbits
    .text
)");
extern "C" void hemi_sim_switch(void** save_sp, void* load_sp);
#endif

namespace hemi_sim {

#if defined(__x86_64__)
void context_init(Context& c, void* stack, std::size_t bytes, void (*entry)()) {
#ifdef HEMI_ASAN
    // A fiber that ended never unwound its frames: their redzones are still poisoned.
    __asan_unpoison_memory_region(stack, bytes);
#endif
    auto top = (reinterpret_cast<uintptr_t>(stack) + bytes) & ~uintptr_t{15};
    auto* sp = reinterpret_cast<uint64_t*>(top);
    *--sp = 0;                                      // entry's (never used) return address
    *--sp = reinterpret_cast<uint64_t>(entry);      // where hemi_sim_switch returns to
    for (int i = 0; i < 6; ++i) *--sp = 0;          // rbp rbx r12 r13 r14 r15
    --sp;                                           // MXCSR and x87 control word: the current ones
    uint32_t mxcsr;
    uint16_t fpcw;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(fpcw));
    std::memcpy(reinterpret_cast<char*>(sp), &mxcsr, 4);
    std::memcpy(reinterpret_cast<char*>(sp) + 4, &fpcw, 2);
    c.sp = sp;
}

void context_switch(Context& from, Context& to) { hemi_sim_switch(&from.sp, to.sp); }
#else
void context_init(Context& c, void* stack, std::size_t bytes, void (*entry)()) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = stack;
    c.uc.uc_stack.ss_size = bytes;
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, entry, 0);
}

void context_switch(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
#endif

thread_local Launch* tl_launch = nullptr;

namespace {
/// `hemi_sim_shake_this_thread`: this host thread's shaker seed, over the environment's.
thread_local bool tl_shake_set = false;
thread_local unsigned long long tl_shake = 0;
}  // namespace

const Config& config() {
    static const Config env = [] {
        Config c;
        if (const char* v = std::getenv("HEMI_SIM_CHECKS")) c.checks = std::strcmp(v, "0") != 0;
        if (const char* v = std::getenv("HEMI_SIM_SHAKE")) {
            c.shake = std::strtoull(v, nullptr, 10);
            c.shake_set = true;
        }
        return c;
    }();
    if (!tl_shake_set) return env;
    thread_local Config mine;
    mine = env;
    mine.shake = tl_shake;
    mine.shake_set = true;
    return mine;
}

std::string describe_thread(unsigned linear) {
    return "thread " + std::to_string(linear) + " (warp " + std::to_string(linear / 32) + ", lane " +
           std::to_string(linear % 32) + ")";
}

namespace {

constexpr unsigned kMaxThreads = 1024;
constexpr unsigned kMaxSmem = 227 * 1024;


thread_local std::vector<Fiber> tl_fibers;
thread_local std::vector<unsigned char> tl_smem;

/// Kernel swaps of this host thread (`hemi_sim_swap_kernel`): launched name -> name run.
thread_local std::unordered_map<std::string, std::string> tl_swaps;

std::unordered_map<std::string, Trampoline>& registry() {
    static std::unordered_map<std::string, Trampoline> r;
    return r;
}

void switch_to_scheduler(Fiber* f, bool dying) {
    Launch* l = tl_launch;
#ifdef HEMI_ASAN
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(dying ? nullptr : &fake, l->sched_stack, l->sched_stack_size);
#endif
    context_switch(f->uc, l->sched);
#ifdef HEMI_ASAN
    __sanitizer_finish_switch_fiber(fake, &l->sched_stack, &l->sched_stack_size);
#endif
    (void)dying;
}

void fiber_entry() {
    Launch* l = tl_launch;
#ifdef HEMI_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &l->sched_stack, &l->sched_stack_size);
#endif
    Fiber* f = l->running;
    l->kernel(l->args);
    if (l->checks) checks_thread_exit(f);
    f->state = State::Done;
    switch_to_scheduler(f, true);
}

void run_fiber(Launch* l, Fiber* f) {
    l->running = f;
#ifdef HEMI_ASAN
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, f->stack, kStackBytes);
#endif
    context_switch(l->sched, f->uc);
#ifdef HEMI_ASAN
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
}

std::string hex(unsigned v) {
    char b[16];
    std::snprintf(b, sizeof b, "%08x", v);
    return b;
}

/// splitmix64: the shaker's random numbers.
uint64_t next_random(uint64_t& state) {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

template <typename T>
void shuffle(std::vector<T>& v, uint64_t& rng) {
    for (std::size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[next_random(rng) % i]);
}

/// Completes warp collectives whose lanes have all arrived; returns true if any did.
bool complete_warps(Launch* l, unsigned nthreads, std::string& err) {
    auto& fs = *l->fibers;
    bool progressed = false;
    for (unsigned w = 0; w * 32 < nthreads; ++w) {
        unsigned base = w * 32;
        unsigned lanes = std::min(32u, nthreads - base);
        int first = -1;
        for (unsigned i = 0; i < lanes; ++i) {
            if (fs[base + i].state == State::AtWarp) {
                first = static_cast<int>(i);
                break;
            }
        }
        if (first < 0) continue;
        unsigned mask = fs[base + first].warp_mask;
        bool ready = true;
        for (unsigned i = 0; i < 32; ++i) {
            if (!(mask & (1u << i))) continue;
            if (i >= lanes) {
                err = "synccheck: a warp collective's mask 0x" + hex(mask) + " names lane " + std::to_string(i) +
                      " of warp " + std::to_string(w) + ", which is beyond the block";
                return false;
            }
            Fiber& f = fs[base + i];
            if (f.state == State::Done || f.state == State::AtBarrier) {
                err = "synccheck: a warp collective with mask 0x" + hex(mask) + " can never complete: lane " +
                      std::to_string(i) + " of warp " + std::to_string(w) +
                      (f.state == State::Done ? " has exited" : " waits at __syncthreads");
                return false;
            }
            if (f.state != State::AtWarp) ready = false;
            else if (f.warp_mask != mask || f.warp_count != fs[base + first].warp_count) {
                err = "synccheck: lanes of warp " + std::to_string(w) +
                      " meet in different warp collectives (masks 0x" + hex(mask) + " and 0x" + hex(f.warp_mask) +
                      ")";
                return false;
            }
        }
        if (!ready) continue;
        unsigned count = fs[base + first].warp_count;
        uint64_t vals[32 * kMaxExchangeWords] = {};
        for (unsigned i = 0; i < 32; ++i)
            if (mask & (1u << i)) std::memcpy(&vals[i * count], fs[base + i].warp_words, count * sizeof(uint64_t));
        for (unsigned i = 0; i < 32; ++i) {
            if (!(mask & (1u << i))) continue;
            std::memcpy(fs[base + i].warp_result, vals, 32 * count * sizeof(uint64_t));
            fs[base + i].state = State::Runnable;
        }
        ++l->warp_sync[w];
        progressed = true;
    }
    return progressed;
}

/// Runs one block to completion; returns false with `l->error` set on failure.
bool run_block(Launch* l, unsigned nthreads, uint64_t& rng) {
    auto& fs = *l->fibers;
    l->barrier_epoch = 0;
    std::fill(std::begin(l->warp_sync), std::end(l->warp_sync), 0u);
    if (l->checks) checks_begin_block(l);
    thread_local std::vector<unsigned> order;
    order.resize(nthreads);
    for (unsigned t = 0; t < nthreads; ++t) order[t] = t;
    for (unsigned t = 0; t < nthreads; ++t) {
        Fiber& f = fs[t];
        f.state = State::Runnable;
        f.async.clear();
        f.committed = 0;
        f.ctx.linear = t;
        f.ctx.thread_idx = {t % l->bdim.x, (t / l->bdim.x) % l->bdim.y, t / (l->bdim.x * l->bdim.y)};
        context_init(f.uc, f.stack, kStackBytes, fiber_entry);
    }
    for (;;) {
        bool ran = false;
        if (l->shake) shuffle(order, rng);
        for (unsigned t : order) {
            if (fs[t].state != State::Runnable) continue;
            run_fiber(l, &fs[t]);
            ran = true;
            if (!l->error.empty()) return false;
        }
        std::string err;
        bool warps = complete_warps(l, nthreads, err);
        if (!err.empty()) {
            l->error = err;
            return false;
        }
        unsigned done = 0, at_barrier = 0;
        for (unsigned t = 0; t < nthreads; ++t) {
            done += fs[t].state == State::Done;
            at_barrier += fs[t].state == State::AtBarrier;
        }
        if (done == nthreads) return true;
        if (at_barrier > 0 && at_barrier + done == nthreads) {
            if (done > 0) {
                l->error = "synccheck: __syncthreads can never complete: " + std::to_string(done) + " of " +
                           std::to_string(nthreads) + " threads have exited";
                return false;
            }
            for (unsigned t = 1; t < nthreads; ++t)
                if (fs[t].barrier_pc != fs[0].barrier_pc) {
                    l->error = "synccheck: the block waits at different __syncthreads (divergent barrier): " +
                               describe_thread(0) + source_location(fs[0].barrier_pc) + ", " + describe_thread(t) +
                               source_location(fs[t].barrier_pc);
                    return false;
                }
            for (unsigned t = 0; t < nthreads; ++t) fs[t].state = State::Runnable;
            ++l->barrier_epoch;
            continue;
        }
        if (!ran && !warps) {
            l->error = "synccheck: deadlock: threads wait at a barrier and a warp collective at once";
            return false;
        }
    }
}

}  // namespace

ThreadCtx* current() { return &tl_launch->running->ctx; }
const uint3& block_idx() { return tl_launch->bidx; }
const dim3& block_dim() { return tl_launch->bdim; }
const dim3& grid_dim() { return tl_launch->gdim; }
void* dynamic_smem() { return tl_launch->smem; }

__attribute__((noinline)) void syncthreads() {
    Fiber* f = tl_launch->running;
    f->barrier_pc = __builtin_return_address(0);
    f->state = State::AtBarrier;
    switch_to_scheduler(f, false);
}

const uint64_t* warp_exchange_words(unsigned mask, const uint64_t* words, unsigned count) {
    Fiber* f = tl_launch->running;
    if (count == 0 || count > kMaxExchangeWords) trap("warp exchange of an unsupported size");
    if (!(mask >> (f->ctx.linear % 32) & 1u))
        fail("synccheck: " + describe_thread(f->ctx.linear) + " calls a warp collective with mask 0x" + hex(mask) +
             ", which excludes the calling lane");
    f->warp_mask = mask;
    f->warp_count = count;
    std::memcpy(f->warp_words, words, count * sizeof(uint64_t));
    f->state = State::AtWarp;
    switch_to_scheduler(f, false);
    return f->warp_result;
}

[[noreturn]] void fail(const std::string& msg) {
    Launch* l = tl_launch;
    Fiber* f = l->running;
    l->error = msg;
    f->state = State::Done;
    switch_to_scheduler(f, true);
    __builtin_unreachable();
}

[[noreturn]] void trap(const char* why) {
    fail("kernel trapped in thread " + std::to_string(tl_launch->running->ctx.linear) + ": " + why);
}

Registrar::Registrar(const char* name, Trampoline t) { registry()[name] = t; }

}  // namespace hemi_sim

using namespace hemi_sim;

static int report(char* err, std::size_t len, const std::string& msg) {
    if (err && len) std::snprintf(err, len, "%s", msg.c_str());
    return 1;
}

extern "C" int hemi_sim_has_kernel(const char* name) { return registry().count(name) ? 1 : 0; }

/// This host thread's launches shake with `seed` (0: program order); `set` 0 returns to the
/// environment's HEMI_SIM_SHAKE.
extern "C" void hemi_sim_shake_this_thread(int set, unsigned long long seed) {
    tl_shake_set = set != 0;
    tl_shake = seed;
}

/// From now on this host thread's launches of `from` run kernel `to` instead (`to` null: stop).
/// Returns 1 if `to` is no kernel. For the mutation tests (kernels-cu/mutant.cuh).
extern "C" int hemi_sim_swap_kernel(const char* from, const char* to) {
    if (!to) {
        tl_swaps.erase(from);
        return 0;
    }
    if (!registry().count(to)) return 1;
    tl_swaps[from] = to;
    return 0;
}

namespace {

/// Everything a host thread needs to run blocks of one launch.
struct LaunchPlan {
    const char* name;
    dim3 g, b;
    unsigned nthreads, smem;
    Trampoline kernel;
    void** args;
    bool checks;
    unsigned long long shake;
    unsigned long long nblocks;
    const std::vector<unsigned long long>* order;  // shaken block order, or null
};

/// The first failure of a launch, shared by the host threads running its blocks.
struct LaunchOutcome {
    std::atomic<unsigned long long> next{0};
    std::atomic<bool> failed{false};
    std::mutex mu;
    std::string error;

    void fail(const std::string& msg) {
        std::lock_guard<std::mutex> g(mu);
        if (error.empty()) error = msg;
        failed = true;
    }
};

/// This host thread's fibers for `n` CUDA threads (stacks mapped once, kept).
bool ensure_fibers(unsigned long long n) {
    if (tl_fibers.size() >= n) return true;
    std::size_t old = tl_fibers.size();
    tl_fibers.resize(n);
    for (std::size_t i = old; i < n; ++i) {
        void* s = mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (s == MAP_FAILED) {
            tl_fibers.resize(i);
            return false;
        }
        tl_fibers[i].stack = s;
    }
    return true;
}

/// Runs blocks of the launch, taking the next untaken one each time, until none is left or
/// one fails.
void run_blocks(const LaunchPlan& p, LaunchOutcome& out) {
    if (!ensure_fibers(p.nthreads)) return out.fail("cannot allocate a fiber stack");
    tl_smem.assign(p.smem + 16, 0);
    Launch l;
    l.name = p.name;
    l.nthreads = p.nthreads;
    l.smem_bytes = p.smem;
    l.checks = p.checks;
    l.shake = p.shake;
    l.fibers = &tl_fibers;
    l.bdim = p.b;
    l.gdim = p.g;
    l.kernel = p.kernel;
    l.args = p.args;
    auto addr = reinterpret_cast<std::uintptr_t>(tl_smem.data());
    l.smem = tl_smem.data() + ((16 - addr % 16) % 16);
    Launch* prev = tl_launch;
    tl_launch = &l;
    uint64_t rng = p.shake;
    while (!out.failed.load(std::memory_order_relaxed)) {
        unsigned long long i = out.next.fetch_add(1);
        if (i >= p.nblocks) break;
        unsigned long long b = p.order ? (*p.order)[i] : i;
        l.bidx = {static_cast<unsigned>(b % p.g.x), static_cast<unsigned>(b / p.g.x % p.g.y),
                  static_cast<unsigned>(b / (1ull * p.g.x * p.g.y))};
        if (!run_block(&l, p.nthreads, rng)) {
            out.fail(std::string(p.name) + " block (" + std::to_string(l.bidx.x) + "," + std::to_string(l.bidx.y) +
                     "," + std::to_string(l.bidx.z) + "): " + l.error);
        }
    }
    tl_launch = prev;
}

/// Host threads that run blocks next to the launching thread (HEMI_SIM_THREADS in all,
/// default: every core). Persistent, so their fiber stacks and checker state are reused;
/// never destroyed (they wait for work until the process exits).
class Workers {
  public:
    static Workers& get() {
        static Workers* w = new Workers(threads_wanted());
        return *w;
    }
    /// Extra host threads (besides the launching one).
    unsigned count() const { return static_cast<unsigned>(threads_.size()); }
    /// Runs `job` on every worker and on the calling thread; returns when all are done.
    void run(const std::function<void()>& job) {
        std::lock_guard<std::mutex> one_at_a_time(run_mu_);
        {
            std::lock_guard<std::mutex> g(mu_);
            job_ = &job;
            running_ = count();
            ++generation_;
        }
        start_.notify_all();
        job();
        std::unique_lock<std::mutex> g(mu_);
        done_.wait(g, [&] { return running_ == 0; });
    }

  private:
    static unsigned threads_wanted() {
        unsigned n = std::thread::hardware_concurrency();
        if (const char* v = std::getenv("HEMI_SIM_THREADS")) n = static_cast<unsigned>(std::strtoul(v, nullptr, 10));
        return n == 0 ? 1 : std::min(n, 64u);
    }
    explicit Workers(unsigned total) {
        for (unsigned i = 1; i < total; ++i) {
            threads_.emplace_back([this] {
                unsigned long long seen = 0;
                for (;;) {
                    const std::function<void()>* job;
                    {
                        std::unique_lock<std::mutex> g(mu_);
                        start_.wait(g, [&] { return generation_ != seen; });
                        seen = generation_;
                        job = job_;
                    }
                    (*job)();
                    std::lock_guard<std::mutex> g(mu_);
                    if (--running_ == 0) done_.notify_all();
                }
            });
            threads_.back().detach();
        }
    }
    std::mutex run_mu_, mu_;
    std::condition_variable start_, done_;
    const std::function<void()>* job_ = nullptr;
    unsigned long long generation_ = 0;
    unsigned running_ = 0;
    std::vector<std::thread> threads_;
};

}  // namespace

/// Runs kernel `name` like cuLaunchKernel: grid and block dims, dynamic shared memory bytes,
/// and one pointer per kernel parameter. Returns 0, or 1 with a message in `err`. The blocks
/// run on every worker host thread (`Workers`) unless the schedule shaker is set (then on the
/// calling thread, in the seeded order, so a seed reproduces).
extern "C" int hemi_sim_launch(const char* name, const unsigned* grid, const unsigned* block, unsigned smem,
                               void** args, char* err, std::size_t err_len) {
    auto swap = tl_swaps.find(name);
    if (swap != tl_swaps.end()) name = swap->second.c_str();
    auto it = registry().find(name);
    if (it == registry().end()) return report(err, err_len, std::string("no kernel named ") + name);
    dim3 g{grid[0], grid[1], grid[2]}, b{block[0], block[1], block[2]};
    unsigned long long nthreads = 1ull * b.x * b.y * b.z;
    if (g.x == 0 || g.y == 0 || g.z == 0 || nthreads == 0)
        return report(err, err_len, "launch with an empty grid or block");
    if (nthreads > kMaxThreads) return report(err, err_len, "more than 1024 threads per block");
    if (smem > kMaxSmem) return report(err, err_len, "more than 227 KiB of dynamic shared memory");
    const Config& cfg = config();
    LaunchPlan plan{name, g, b, static_cast<unsigned>(nthreads), smem, it->second, args, cfg.checks, cfg.shake,
                    1ull * g.x * g.y * g.z, nullptr};
    std::vector<unsigned long long> order;
    if (cfg.shake) {
        order.resize(plan.nblocks);
        for (unsigned long long i = 0; i < plan.nblocks; ++i) order[i] = i;
        uint64_t rng = cfg.shake;
        shuffle(order, rng);
        plan.order = &order;
    }
    LaunchOutcome out;
    Workers& w = Workers::get();
    if (cfg.shake_set || plan.nblocks < 2 || w.count() == 0) run_blocks(plan, out);
    else w.run([&] { run_blocks(plan, out); });
    if (out.failed) return report(err, err_len, out.error);
    return 0;
}
