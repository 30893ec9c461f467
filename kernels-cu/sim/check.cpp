// The emulator's checkers (README, "Testing"), the host counterparts of compute-sanitizer's
// racecheck, initcheck, synccheck and memcheck alignment rules:
//
// * Every memory access of kernel code is seen here: the kernel sources are compiled with GCC's
//   `-fsanitize=thread` instrumentation, which calls `__tsan_readN` / `__tsan_writeN(addr)` before
//   each load and store. No ThreadSanitizer runtime is linked: this file defines those entry
//   points and sends each access to a checker. (Accesses to a thread's own stack, i.e. its
//   registers and local arrays, are skipped.)
// * Shared memory (the launch's dynamic shared memory, and static `__shared__` variables, which
//   live in the executable's static thread-local block) has a shadow entry per byte: the last
//   write and the last read(s), each as (block generation, barrier epoch, warp-sync count,
//   thread). racecheck: an access by thread u to a byte that thread t ≠ u wrote (or, for a
//   write, read) with no `__syncthreads` completed since — and, within one warp, no warp
//   collective (`__syncwarp`, shuffle, ballot, ldmatrix, mma) completed since — is reported.
//   initcheck: reading a byte never written in this block (shared memory starts poisoned).
// * Device allocations are registered by the driver (`hemi_sim_track_*`): fresh blocks are
//   poisoned (0xFF bytes, a NaN in every float format) with a written-bit per byte; kernel writes
//   and uploads set the bits, and a kernel read of a byte never written is reported.
// * cp.async copies are held per thread and land only when `cp.async.wait_group` covers their
//   group; the destination reads as poisoned (and is reported) until then.
// * Alignment: naturally aligned accesses (`__tsan_readN` on an N-aligned type), vector loads and
//   stores, ldmatrix rows and cp.async operands must be aligned as the GPU requires.
//
// Global memory written and read by different blocks of one launch is not tracked per byte
// (the shadow would cost 8 bytes per byte of device memory); the shaker's random block order
// (HEMI_SIM_SHAKE) exposes such order dependence instead.
#include "state.h"

#include <dlfcn.h>
#include <link.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <map>
#include <mutex>

extern "C" void* __tls_get_addr(void*);

namespace hemi_sim {
namespace {

constexpr uint16_t kMany = 0xffff;

/// One access in the shadow: when (block generation, barrier epoch, warp-sync count of the
/// accessing warp) and by whom (thread, warp; kMany for several readers).
struct Access {
    uint32_t gen = 0, epoch = 0, wsync = 0;
    uint16_t thread = 0, warp = 0;
};

struct ShadowByte {
    Access w, r;
    uint32_t pending_gen = 0;  // block generation of `pending`
    uint32_t pending = 0;      // cp.async copies in flight to this byte
};

struct SharedRegion {
    uintptr_t lo = 0;
    std::size_t size = 0;
    std::vector<ShadowByte> shadow;
    const char* name = "";
};

thread_local SharedRegion tl_dynamic, tl_static;
thread_local uint32_t tl_serial = 0;
thread_local uintptr_t tl_fibers_lo = 0, tl_fibers_bytes = 0;

/// A registered device allocation with a written-bit per byte.
struct Alloc {
    uintptr_t base = 0;
    std::size_t bytes = 0;
    std::vector<uint8_t> written;
};

std::mutex g_allocs_mu;
std::map<uintptr_t, Alloc> g_allocs;
std::atomic<uint64_t> g_allocs_version{1};

struct AllocCache {
    uint64_t version = 0;
    uintptr_t hit_lo = 0, hit_hi = 0;
    Alloc* hit = nullptr;
    uintptr_t miss_lo = 0, miss_hi = 0;
};
thread_local AllocCache tl_cache;

std::string hex(uintptr_t v) {
    char b[32];
    std::snprintf(b, sizeof b, "0x%lx", static_cast<unsigned long>(v));
    return b;
}

/// "kernels-cu/prim.cuh:180 (ldmatrix_sim) <- kernels-cu/matmul.cu:229 (gemm_mma_impl)", from the
/// debug information through addr2line, or "" when there is none.
std::string describe_pc(const void* pc) {
    Dl_info here{}, info{};
    if (!pc || !dladdr(pc, &info) || !dladdr(reinterpret_cast<void*>(&describe_pc), &here)) return "";
    std::string file = info.dli_fname ? info.dli_fname : "";
    if (info.dli_fbase == here.dli_fbase) {  // the executable: its real path (not /proc/self/exe,
        char exe[4096];                       // which addr2line would read as itself)
        ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
        if (n > 0) file.assign(exe, static_cast<std::size_t>(n));
    }
    if (file.empty()) return "";
    uintptr_t off = reinterpret_cast<uintptr_t>(pc) - reinterpret_cast<uintptr_t>(info.dli_fbase) - 1;
    std::string cmd = "addr2line -C -f -i -e '" + file + "' " + hex(off) + " 2>/dev/null";
    FILE* p = popen(cmd.c_str(), "r");
    if (!p) return "";
    std::vector<std::string> lines;
    char buf[1024];
    while (std::fgets(buf, sizeof buf, p)) {
        std::string s(buf);
        while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
        lines.push_back(s);
    }
    pclose(p);
    std::string out;
    for (std::size_t i = 0; i + 1 < lines.size() && i < 8; i += 2) {
        std::string func = lines[i], loc = lines[i + 1];
        if (loc.rfind("??", 0) == 0) continue;
        std::size_t cut = loc.find("kernels-cu/");
        if (cut != std::string::npos) loc = loc.substr(cut);
        if (!func.empty() && func.back() == ')') {  // drop the parameter list: "(...)" at the end
            int depth = 0;
            for (std::size_t j = func.size(); j-- > 0;) {
                depth += func[j] == ')' ? 1 : func[j] == '(' ? -1 : 0;
                if (depth == 0) {
                    func.resize(j);
                    break;
                }
            }
        }
        if (!out.empty()) out += " <- ";
        out += loc + " (" + func + ")";
    }
    return out;
}

std::string at(const void* pc) { return source_location(pc); }

unsigned me() { return tl_launch->running->ctx.linear; }

/// Whether an earlier access `a` happens before the running thread `u`'s access.
bool ordered(const Launch* l, const Access& a, unsigned u) {
    if (a.thread == u) return true;  // program order
    if (a.epoch != l->barrier_epoch) return true;  // a __syncthreads completed since
    unsigned w = u / 32;
    return a.warp == w && l->warp_sync[w] != a.wsync;  // a collective of this warp since
}

std::string who(uint16_t thread) {
    return thread == kMany ? std::string("several threads") : describe_thread(thread);
}

[[noreturn]] void report_shared(const char* check, const SharedRegion& r, std::size_t off, unsigned size,
                                bool write, const std::string& what, const void* pc) {
    fail(std::string(check) + ": " + describe_thread(me()) + (write ? " writes " : " reads ") +
         std::to_string(size) + " bytes of " + r.name + " at offset " + hex(off) + what + at(pc));
}

void shared_access(Launch* l, SharedRegion& r, uintptr_t addr, unsigned size, bool write, const void* pc) {
    std::size_t off = addr - r.lo;
    if (off + size > r.size)
        fail("memcheck: " + describe_thread(me()) + " accesses " + std::to_string(size) + " bytes at offset " +
             hex(off) + " of " + r.name + ", which has " + std::to_string(r.size) + " bytes" + at(pc));
    unsigned u = me();
    Access now{l->block_serial, l->barrier_epoch, l->warp_sync[u / 32], static_cast<uint16_t>(u),
               static_cast<uint16_t>(u / 32)};
    for (unsigned i = 0; i < size; ++i) {
        ShadowByte& s = r.shadow[off + i];
        if (s.pending && s.pending_gen == l->block_serial)
            report_shared(write ? "racecheck" : "initcheck", r, off, size, write,
                          write ? " while a cp.async copy into it is in flight"
                                : ", the destination of a cp.async copy that has not landed (no "
                                  "cp.async.wait_group covers its group)",
                          pc);
        bool written = s.w.gen == l->block_serial;
        if (write) {
            if (written && !ordered(l, s.w, u))
                report_shared("racecheck", r, off, size, true,
                              " that " + who(s.w.thread) + " wrote with no barrier between the writes", pc);
            if (s.r.gen == l->block_serial && !ordered(l, s.r, u))
                report_shared("racecheck", r, off, size, true,
                              " that " + who(s.r.thread) + " read with no barrier between read and write", pc);
            s.w = now;
        } else {
            if (!written)
                report_shared("initcheck", r, off, size, false, ", never written in this block", pc);
            if (!ordered(l, s.w, u))
                report_shared("racecheck", r, off, size, false,
                              " that " + who(s.w.thread) + " wrote with no barrier between write and read", pc);
            if (s.r.gen == l->block_serial && s.r.epoch == now.epoch && s.r.thread != u) {
                s.r.thread = kMany;
                if (s.r.warp != now.warp) s.r.warp = kMany;
                s.r.wsync = now.wsync;
            } else {
                s.r = now;
            }
        }
    }
}

Alloc* find_alloc(uintptr_t a) {
    AllocCache& c = tl_cache;
    uint64_t v = g_allocs_version.load(std::memory_order_acquire);
    if (c.version != v) {
        c = AllocCache{};
        c.version = v;
    }
    if (a - c.hit_lo < c.hit_hi - c.hit_lo) return c.hit;
    if (a - c.miss_lo < c.miss_hi - c.miss_lo) return nullptr;
    auto it = g_allocs.upper_bound(a);
    uintptr_t gap_hi = it == g_allocs.end() ? UINTPTR_MAX : it->first, gap_lo = 0;
    if (it != g_allocs.begin()) {
        --it;
        Alloc& al = it->second;
        if (a < al.base + al.bytes) {
            c.hit_lo = al.base;
            c.hit_hi = al.base + al.bytes;
            c.hit = &al;
            return &al;
        }
        gap_lo = al.base + al.bytes;
    }
    c.miss_lo = gap_lo;
    c.miss_hi = gap_hi;
    return nullptr;
}

void global_access(uintptr_t addr, std::size_t size, bool write, const void* pc) {
    Alloc* al = find_alloc(addr);
    if (!al) return;  // host memory: kernel arguments, the emulator's own state
    std::size_t off = addr - al->base;
    if (off + size > al->bytes)
        fail("memcheck: " + describe_thread(me()) + " accesses " + std::to_string(size) + " bytes at offset " +
             hex(off) + " of a " + std::to_string(al->bytes) + "-byte device allocation" + at(pc));
    uint8_t* bits = al->written.data() + off;
    if (write) {
        std::memset(bits, 1, size);
        return;
    }
    for (std::size_t i = 0; i < size; ++i)
        if (!bits[i])
            fail("initcheck: " + describe_thread(me()) + " reads " + std::to_string(size) + " bytes at offset " +
                 hex(off) + " of a " + std::to_string(al->bytes) + "-byte device allocation; byte " +
                 hex(off + i) + " was never written" + at(pc));
}

/// The executable's static TLS block of this thread (where `__shared__` variables live).
void locate_static_shared() {
    static const std::size_t tls_size = [] {
        std::size_t size = 0;
        dl_iterate_phdr(
            [](dl_phdr_info* info, std::size_t, void* out) {
                for (int i = 0; i < info->dlpi_phnum; ++i)
                    if (info->dlpi_phdr[i].p_type == PT_TLS && info->dlpi_tls_modid == 1)
                        *static_cast<std::size_t*>(out) = info->dlpi_phdr[i].p_memsz;
                return 1;  // the first object is the executable
            },
            &size);
        return size;
    }();
    struct TlsIndex {
        unsigned long module, offset;
    } index{1, 0};
    tl_static.lo = reinterpret_cast<uintptr_t>(__tls_get_addr(&index));
    tl_static.size = tls_size;
    tl_static.shadow.assign(tls_size, ShadowByte{});
    tl_static.name = "static shared memory";
    tl_dynamic.name = "dynamic shared memory";
}

/// Routes one instrumented access (see the file comment).
inline void on_access(const void* p, std::size_t size, bool write, bool natural, const void* pc) {
    Launch* l = tl_launch;
    if (!l || !l->checks || !l->running) return;
    auto a = reinterpret_cast<uintptr_t>(p);
    if (a - reinterpret_cast<uintptr_t>(l->running->stack) < kStackBytes) return;
    if (a - tl_fibers_lo < tl_fibers_bytes) return;  // threadIdx and friends
    if (natural && size > 1 && (a & (size - 1)))
        fail("misaligned access: " + describe_thread(me()) + (write ? " writes " : " reads ") +
             std::to_string(size) + " bytes at " + hex(a) + ", not " + std::to_string(size) + "-byte aligned" +
             at(pc));
    if (a - tl_dynamic.lo < tl_dynamic.size + 16) shared_access(l, tl_dynamic, a, size, write, pc);
    else if (a - tl_static.lo < tl_static.size) shared_access(l, tl_static, a, size, write, pc);
    else global_access(a, size, write, pc);
}

SharedRegion* shared_region(uintptr_t a, std::size_t size) {
    if (a - tl_dynamic.lo < tl_dynamic.size && a + size <= tl_dynamic.lo + tl_dynamic.size) return &tl_dynamic;
    if (a - tl_static.lo < tl_static.size && a + size <= tl_static.lo + tl_static.size) return &tl_static;
    return nullptr;
}

/// Writes the copy's bytes and records them as written by the issuing (running) thread.
void land(Launch* l, AsyncCopy& c) {
    if (c.zero_fill) std::memset(c.dst, 0, c.bytes);
    else std::memcpy(c.dst, c.data, c.bytes);
    auto a = reinterpret_cast<uintptr_t>(c.dst);
    if (SharedRegion* r = shared_region(a, c.bytes)) {
        for (unsigned i = 0; i < c.bytes; ++i) --r->shadow[a - r->lo + i].pending;
        shared_access(l, *r, a, c.bytes, true, c.pc);
    }
}

void check_aligned_at(const void* p, unsigned bytes, const char* what, const void* pc) {
    Launch* l = tl_launch;
    if (!l || !l->checks) return;
    auto a = reinterpret_cast<uintptr_t>(p);
    if (a % bytes)
        fail(std::string("misaligned ") + what + ": " + describe_thread(me()) + " uses address " + hex(a) +
             ", which is not " + std::to_string(bytes) + "-byte aligned" + at(pc));
}

}  // namespace

std::string source_location(const void* pc) {
    std::string where = describe_pc(pc);
    return where.empty() ? std::string(" (no source location: built without debug information)") : " at " + where;
}

void checks_begin_block(Launch* l) {
    if (tl_static.shadow.empty()) locate_static_shared();
    if (++tl_serial == 0) {  // generation stamps wrapped: forget every old stamp
        for (auto& s : tl_static.shadow) s = ShadowByte{};
        for (auto& s : tl_dynamic.shadow) s = ShadowByte{};
        tl_serial = 1;
    }
    l->block_serial = tl_serial;
    tl_dynamic.lo = reinterpret_cast<uintptr_t>(l->smem);
    tl_dynamic.size = l->smem_bytes;
    if (tl_dynamic.shadow.size() < l->smem_bytes) tl_dynamic.shadow.resize(l->smem_bytes);
    std::memset(l->smem, 0xff, l->smem_bytes);  // poison: NaN in f32, f16 and bf16
    tl_fibers_lo = reinterpret_cast<uintptr_t>(l->fibers->data());
    tl_fibers_bytes = l->fibers->size() * sizeof(Fiber);
}

void checks_thread_exit(Fiber* f) {
    if (f->async.empty()) return;
    const AsyncCopy& c = f->async.front();
    fail("cp.async: " + describe_thread(f->ctx.linear) + " exits with " + std::to_string(f->async.size()) +
         " copies never waited for (the first issued" + at(c.pc) + ")");
}

void check_aligned(const void* p, unsigned bytes, const char* what) {
    check_aligned_at(p, bytes, what, __builtin_return_address(0));
}

namespace {
/// An atomic update of `*addr` by `next(old)`, seen by the checkers as a read and a write.
/// The checks of an atomic access: alignment, and initcheck / bounds of what it reads and
/// writes. Atomics of different threads on one location are no race, so racecheck skips them.
void atomic_access(const void* p, std::size_t size, const void* pc) {
    Launch* l = tl_launch;
    if (!l || !l->checks || !l->running) return;
    auto a = reinterpret_cast<uintptr_t>(p);
    if (a & (size - 1))
        fail("misaligned atomic: " + describe_thread(me()) + " at " + hex(a) + at(pc));
    SharedRegion* r = nullptr;
    if (a - tl_dynamic.lo < tl_dynamic.size) r = &tl_dynamic;
    else if (a - tl_static.lo < tl_static.size) r = &tl_static;
    if (!r) {
        global_access(a, size, false, pc);
        global_access(a, size, true, pc);
        return;
    }
    for (std::size_t i = 0; i < size && a - r->lo + i < r->size; ++i)
        if (r->shadow[a - r->lo + i].w.gen != l->block_serial)
            report_shared("initcheck", *r, a - r->lo, static_cast<unsigned>(size), false,
                          ", never written in this block (an atomic reads it)", pc);
}

template <typename T, typename Bits, typename F>
T atomic_update(T* addr, F next, const void* pc) {
    atomic_access(addr, sizeof(T), pc);
    auto* word = reinterpret_cast<Bits*>(addr);
    Bits old = __atomic_load_n(word, __ATOMIC_RELAXED);
    for (;;) {
        T o, n;
        std::memcpy(&o, &old, sizeof(T));
        n = next(o);
        Bits nb;
        std::memcpy(&nb, &n, sizeof(T));
        if (__atomic_compare_exchange_n(word, &old, nb, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) return o;
    }
}
}  // namespace

float atomic_add(float* a, float v) {
    return atomic_update<float, uint32_t>(a, [v](float o) { return o + v; }, __builtin_return_address(0));
}
int atomic_add(int* a, int v) {
    return atomic_update<int, uint32_t>(a, [v](int o) { return o + v; }, __builtin_return_address(0));
}
unsigned atomic_add(unsigned* a, unsigned v) {
    return atomic_update<unsigned, uint32_t>(a, [v](unsigned o) { return o + v; }, __builtin_return_address(0));
}
unsigned long long atomic_add(unsigned long long* a, unsigned long long v) {
    return atomic_update<unsigned long long, uint64_t>(
        a, [v](unsigned long long o) { return o + v; }, __builtin_return_address(0));
}
float atomic_max_nonneg(float* a, float v) {
    return atomic_update<float, uint32_t>(a, [v](float o) { return v > o ? v : o; }, __builtin_return_address(0));
}
unsigned long long atomic_min_u64(unsigned long long* a, unsigned long long v) {
    return atomic_update<unsigned long long, uint64_t>(
        a, [v](unsigned long long o) { return v < o ? v : o; }, __builtin_return_address(0));
}

void cp_async(void* dst, const void* src, unsigned bytes, bool valid) {
    Launch* l = tl_launch;
    const void* pc = __builtin_return_address(0);
    if (!l->checks) {
        if (valid) std::memcpy(dst, src, bytes);
        else std::memset(dst, 0, bytes);
        return;
    }
    if (bytes != 4 && bytes != 8 && bytes != 16) fail("cp.async of " + std::to_string(bytes) + " bytes" + at(pc));
    check_aligned_at(dst, bytes, "cp.async shared-memory destination", pc);
    if (valid) check_aligned_at(src, bytes, "cp.async global source", pc);
    auto a = reinterpret_cast<uintptr_t>(dst);
    SharedRegion* r = shared_region(a, bytes);
    if (!r) fail("cp.async: " + describe_thread(me()) + " copies to " + hex(a) + ", which is not shared memory" + at(pc));
    AsyncCopy c{};
    c.dst = static_cast<unsigned char*>(dst);
    c.bytes = bytes;
    c.zero_fill = !valid;
    c.pc = pc;
    if (valid) {
        global_access(reinterpret_cast<uintptr_t>(src), bytes, false, pc);
        std::memcpy(c.data, src, bytes);
    }
    // The destination is busy until the copy lands: a write now races with the copy unit.
    shared_access(l, *r, a, bytes, true, pc);
    for (unsigned i = 0; i < bytes; ++i) {
        ShadowByte& s = r->shadow[a - r->lo + i];
        if (s.pending_gen != l->block_serial) s = ShadowByte{s.w, s.r, l->block_serial, 0};
        ++s.pending;
    }
    std::memset(dst, 0xff, bytes);
    l->running->async.push_back(c);
}

void cp_async_commit() {
    Launch* l = tl_launch;
    if (!l->checks) return;
    Fiber* f = l->running;
    ++f->committed;
    for (AsyncCopy& c : f->async)
        if (c.group == 0) c.group = f->committed;
}

void cp_async_wait(unsigned n) {
    Launch* l = tl_launch;
    if (!l->checks) return;
    Fiber* f = l->running;
    unsigned long long upto = f->committed > n ? f->committed - n : 0;
    std::size_t kept = 0;
    for (std::size_t i = 0; i < f->async.size(); ++i) {
        AsyncCopy& c = f->async[i];
        if (c.group != 0 && c.group <= upto) land(l, c);
        else f->async[kept++] = c;
    }
    f->async.resize(kept);
}

}  // namespace hemi_sim

using namespace hemi_sim;

// ---- the instrumentation entry points GCC's -fsanitize=thread emits ----
extern "C" {
void __tsan_init() {}
void __tsan_func_entry(void*) {}
void __tsan_func_exit() {}
#define HEMI_TSAN_HOOKS(N)                                                                                  \
    void __tsan_read##N(void* p) { on_access(p, N, false, true, __builtin_return_address(0)); }            \
    void __tsan_write##N(void* p) { on_access(p, N, true, true, __builtin_return_address(0)); }            \
    void __tsan_unaligned_read##N(void* p) { on_access(p, N, false, false, __builtin_return_address(0)); } \
    void __tsan_unaligned_write##N(void* p) { on_access(p, N, true, false, __builtin_return_address(0)); }
HEMI_TSAN_HOOKS(1)
HEMI_TSAN_HOOKS(2)
HEMI_TSAN_HOOKS(4)
HEMI_TSAN_HOOKS(8)
HEMI_TSAN_HOOKS(16)
#undef HEMI_TSAN_HOOKS
void __tsan_read_range(void* p, unsigned long n) { on_access(p, n, false, false, __builtin_return_address(0)); }
void __tsan_write_range(void* p, unsigned long n) { on_access(p, n, true, false, __builtin_return_address(0)); }
}

// ---- the driver's side: device allocations ----

/// A device block handed to a new owner (fresh or reused from a cache): poisoned, never written.
extern "C" void hemi_sim_track_alloc(void* ptr, std::size_t bytes) {
    std::memset(ptr, 0xff, bytes);
    std::lock_guard<std::mutex> g(g_allocs_mu);
    Alloc& a = g_allocs[reinterpret_cast<uintptr_t>(ptr)];
    a.base = reinterpret_cast<uintptr_t>(ptr);
    a.bytes = bytes;
    a.written.assign(bytes, 0);
    g_allocs_version.fetch_add(1, std::memory_order_release);
}

/// The block at `ptr` is no longer a device allocation.
extern "C" void hemi_sim_track_free(void* ptr) {
    std::lock_guard<std::mutex> g(g_allocs_mu);
    g_allocs.erase(reinterpret_cast<uintptr_t>(ptr));
    g_allocs_version.fetch_add(1, std::memory_order_release);
}

/// `bytes` at `ptr` were written by the host (an upload).
extern "C" void hemi_sim_track_written(const void* ptr, std::size_t bytes) {
    std::lock_guard<std::mutex> g(g_allocs_mu);
    auto a = reinterpret_cast<uintptr_t>(ptr);
    auto it = g_allocs.upper_bound(a);
    if (it == g_allocs.begin()) return;
    --it;
    Alloc& al = it->second;
    if (a >= al.base + al.bytes) return;
    std::size_t off = a - al.base, n = std::min(bytes, al.bytes - off);
    std::memset(al.written.data() + off, 1, n);
}
