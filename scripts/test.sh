#!/usr/bin/env bash
# The test entry point (README's test command): formatting, lints, every test without and
# with the CUDA backend (emulated where there is no GPU), the data-parallel tests over
# Open MPI (installed by scripts/install-mpi.sh where possible), a crate outside the workspace using
# hemi with feature `cuda`, and the kernel tests under ASan. Installs the pinned CUDA toolchain
# first when it is missing (scripts/install-cuda-toolchain.sh; a no-op once installed).
set -euo pipefail
cd "$(dirname "$0")/.."
# Keep the build small on disk: with full debug info every test binary is ~150 MB and a whole
# run (two feature sets, the ASan build, the dependent crate) filled 17 GB; a CI machine ran
# out of space. Line tables keep panics' backtraces readable; incremental caches only help
# rebuilds, which CI never does.
export CARGO_INCREMENTAL=0
export CARGO_PROFILE_DEV_DEBUG=line-tables-only
export CARGO_PROFILE_TEST_DEBUG=line-tables-only
echo "disk before the build: $(df -h . | awk 'NR == 2 {print $4}') free"
bash scripts/install-cuda-toolchain.sh
# Open MPI for feature `mpi` (the data-parallel tests launch `mpirun -np 2`); without it the
# workspace is tested without the feature and the 2-rank tests say they skipped.
bash scripts/install-mpi.sh
MPI=()
if command -v mpicc >/dev/null 2>&1 && command -v mpirun >/dev/null 2>&1; then
    MPI=(--features mpi)
else
    echo "warning: no Open MPI: testing without feature mpi (the 2-rank tests skip)"
fi
# NCCL from the toolchain's wheel for tests/nccl.rs (loaded at run time).
export HEMI_NCCL_LIB="$PWD/.cuda-toolchain/nvidia/nccl/lib/libnccl.so.2"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets "${MPI[@]}" -- -D warnings
cargo test --workspace "${MPI[@]}"
cargo clippy --workspace --all-targets --features "cuda ${MPI[*]:+mpi}" -- -D warnings
cargo test --workspace --features cuda
# hemi as a library of another crate (outside this workspace) with feature `cuda`: nvcc found
# the same way (NVCC, CUDA_HOME, PATH, or this checkout's .cuda-toolchain/), libcuda linked.
cargo run --quiet --manifest-path scripts/dependent-crate/Cargo.toml
# Every test again under two seeds of the emulator's schedule shaker (random block order and
# random thread order between barriers); the checkers stay on.
HEMI_SIM_SHAKE=1 cargo test --workspace --features cuda
HEMI_SIM_SHAKE=2 cargo test --workspace --features cuda
# The emulated kernels once more, with AddressSanitizer catching out-of-bounds accesses (this
# build replaces the checkers' access instrumentation, which cannot be combined with ASan).
HEMI_SIM_ASAN=1 \
    RUSTFLAGS="-Clink-arg=-fsanitize=address -Clink-arg=-lasan" \
    CARGO_TARGET_DIR=target/asan \
    CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$PWD/scripts/asan-runner.sh" \
    cargo test --features cuda --test cuda_sim
# The fuzz slice (random op programs on the CPU and the emulator, random checkpoint bytes)
# under the same AddressSanitizer build; it requests allocations larger than memory on purpose
# (they must come back as `Err(OutOfMemory)`), which ASan must answer with null, not a report.
HEMI_SIM_ASAN=1 \
    ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1 \
    RUSTFLAGS="-Clink-arg=-fsanitize=address -Clink-arg=-lasan" \
    CARGO_TARGET_DIR=target/asan \
    CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$PWD/scripts/asan-runner.sh" \
    cargo test -p hemi-fuzz --features cuda --test slice
echo "disk after the tests: $(df -h . | awk 'NR == 2 {print $4}') free, target/ $(du -sh target | cut -f1)"
