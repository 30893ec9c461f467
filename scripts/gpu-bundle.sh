#!/usr/bin/env bash
# Builds release test and bench binaries with `--features cuda` here and collects them, with
# bundle/run.sh and the PyTorch comparison, into ./bundle (ignored by git; at most 60 MiB: the
# binaries go into bundle/bin.tar.gz).
# On a GPU host with no Rust and no network: `bash bundle/run.sh` runs the GPU tests, the
# compute-sanitizer tools (memcheck, racecheck, initcheck, synccheck) over them, the GEMM and conv
# benches briefly, ResNet-18 training steps (hemi fp32, hemi AMP, PyTorch eager AMP), the same
# GEMMs and convolutions through torch.matmul / cuDNN, and prints the tables last.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-cuda-toolchain.sh >/dev/null
rm -rf bundle && mkdir -p bundle/tests bundle/benches bundle/examples
collect() { # $1 = dest dir; stdin = cargo's JSON messages
    python3 -c '
import json, shutil, sys, os
dest = sys.argv[1]
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    exe = m.get("executable")
    if m.get("reason") == "compiler-artifact" and exe and m["target"]["kind"] != ["custom-build"]:
        name = m["target"]["name"]
        shutil.copy2(exe, os.path.join(dest, name))
        print("bundled", dest, name)
' "$1"
}
cargo test --release --features cuda --no-run --message-format=json --test cuda_sim --test backend --test cuda_gemm --test cuda_sass --test amp_scaler --test nccl | collect bundle/tests
cargo bench --features cuda --no-run --message-format=json --bench gemm --bench amp_kernels --bench conv | collect bundle/benches
cargo build --release --features cuda --message-format=json --example resnet18_amp | collect bundle/examples
cp scripts/bundle/run.sh scripts/bundle/torch_gemm.py scripts/bundle/table.py scripts/bundle/torch_conv.py \
    scripts/bundle/torch_resnet_step.py scripts/bundle/conv_table.py scripts/bundle/criterion_out.py bundle/
strip bundle/tests/* bundle/benches/* bundle/examples/* 2>/dev/null || true
# The binaries travel compressed (each carries the emulator and the fatbin); run.sh unpacks them.
tar -C bundle -czf bundle/bin.tar.gz tests benches examples
rm -rf bundle/tests bundle/benches bundle/examples
size=$(du -sm bundle | cut -f1)
echo "bundle: ${size} MiB in bundle/"
if [[ $size -gt 60 ]]; then
    echo "bundle exceeds 60 MiB" >&2
    exit 1
fi
