// mutant.cuh — deliberate bugs for the emulator's mutation tests (README, "Testing"). A kernel
// template takes a `Mutant` and compiles the named bug in when asked; the buggy instantiations
// are registered with the emulator only (never part of the GPU fatbin), under the real kernel's
// name plus `__<mutant>`, and a test swaps one in for the real kernel (`sim::KernelSwap`) and
// checks the emulator's checkers report it, naming the kernel.
#pragma once

enum class Mutant {
    None,
    DropBarrier,       // the GEMM pipeline's __syncthreads after cp.async.wait_group is gone
    WrongAsyncGroup,   // the GEMM waits for one cp.async group too few
    ReadUnwritten,     // block_sum reads every warp's partial, also of warps the block lacks
    MisalignedVector,  // the vectorized elementwise kernel's first 16-byte load is 4 bytes off
};

#ifdef HEMI_SIM
#define HEMI_MUTANT_KERNEL(name) HEMI_KERNEL(name)
#else
#define HEMI_MUTANT_KERNEL(name)
#endif
