#!/usr/bin/env bash
# Installs Open MPI (mpirun, mpicc, headers) and libclang (the `mpi` crate generates its
# bindings with bindgen) for hemi's feature `mpi`. Idempotent: does nothing when mpicc and
# libclang are there. Installs only as root on Debian/Ubuntu; elsewhere it says what to install.
set -euo pipefail
have_libclang() {
    # (The cache read whole: `grep -q` on a pipe can leave ldconfig to die of SIGPIPE.)
    grep -q 'libclang[-.0-9]*\.so' <<<"$(ldconfig -p 2>/dev/null || true)" || ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1
}
if command -v mpicc >/dev/null 2>&1 && command -v mpirun >/dev/null 2>&1 && have_libclang; then
    echo "mpi: $(mpirun --version 2>/dev/null | head -1)"
    exit 0
fi
if [[ $(id -u) -eq 0 && -f /etc/debian_version ]]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        openmpi-bin libopenmpi-dev libclang-dev >/dev/null
    echo "mpi: installed $(mpirun --version 2>/dev/null | head -1) and libclang"
else
    echo "mpi: Open MPI or libclang missing; install them (Debian: apt-get install openmpi-bin libopenmpi-dev libclang-dev) for feature mpi"
fi
