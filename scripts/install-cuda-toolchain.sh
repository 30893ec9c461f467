#!/usr/bin/env bash
# Installs the pinned CUDA 13.0 compiler wheels (DESIGN.md §5) into .cuda-toolchain/ (ignored by
# git). Idempotent: a stamp file records the installed versions and a rerun with the same pins
# does nothing. When run as root on Debian without an NVIDIA driver, it also installs Debian's
# libcuda1 (non-free) so that crates linking libcuda (cust) link; cuInit then reports
# "no CUDA-capable device" at run time, which the tests handle.
#
# Afterwards: nvcc is .cuda-toolchain/nvidia/cu13/bin/nvcc (build.rs finds it there).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=.cuda-toolchain
PINS=(
    nvidia-cuda-nvcc==13.0.88
    nvidia-cuda-crt==13.0.88
    nvidia-cuda-runtime==13.0.96
    nvidia-nvvm==13.0.88
    nvidia-cuda-cccl==13.0.85
    nvidia-cuda-cuobjdump==13.2.86
    nvidia-cuda-nvdisasm==13.2.86
    # NCCL for hemi::distributed's NcclCommunicator (loaded at run time; its tests load it
    # from here: .cuda-toolchain/nvidia/nccl/lib/libnccl.so.2).
    nvidia-nccl-cu13==2.32.3
)
STAMP="$DEST/.installed"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "${PINS[*]}" ]]; then
    echo "cuda toolchain: already installed in $DEST"
else
    rm -rf "$DEST"
    python3 -m pip install --quiet --no-deps --target "$DEST" "${PINS[@]}"
    echo "${PINS[*]}" > "$STAMP"
    echo "cuda toolchain: installed ${#PINS[@]} wheels into $DEST"
fi
NVCC="$DEST/nvidia/cu13/bin/nvcc"
chmod +x "$DEST"/nvidia/cu13/bin/* 2>/dev/null || true
"$NVCC" --version | tail -2

# The linker cache, read whole (under pipefail, a reader that stops at its first match —
# `grep -q`, awk's `exit` — can leave ldconfig writing into a closed pipe: SIGPIPE, status 141,
# and `set -e` ended the script whenever the cache was longer than one pipe write).
ld_cache=$(ldconfig -p 2>/dev/null || true)

# libcuda for linking: only as root on Debian, only when no driver library is present.
if ! grep -q 'libcuda\.so\b' <<<"$ld_cache"; then
    if [[ $(id -u) -eq 0 && -f /etc/debian_version ]]; then
        codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
        src=/etc/apt/sources.list.d/hemi-non-free.sources
        if [[ ! -f $src ]]; then
            printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: %s\nComponents: contrib non-free\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$codename" > "$src"
        fi
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libcuda1 >/dev/null
        echo "cuda toolchain: installed Debian's libcuda1 (no GPU needed to link)"
    else
        echo "cuda toolchain: libcuda.so not found; install the NVIDIA driver (or Debian's libcuda1) to link cust"
    fi
fi

# cust's build script (find_cuda_helper) wants CUDA_LIBRARY_PATH/<dir>/lib64 holding libcuda;
# .cargo/config.toml points CUDA_LIBRARY_PATH at .cuda-toolchain/driver.
ld_cache=$(ldconfig -p 2>/dev/null || true)
libcuda=$(awk '/libcuda\.so( |$)/ {print $NF; exit}' <<<"$ld_cache")
if [[ -n "$libcuda" ]]; then
    mkdir -p "$DEST/driver/lib64"
    ln -sf "$libcuda" "$DEST/driver/lib64/libcuda.so"
fi
