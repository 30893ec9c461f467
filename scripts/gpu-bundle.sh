#!/usr/bin/env bash
# Builds release test and bench binaries with `--features cuda` here and collects them, with
# bundle/run.sh and the PyTorch comparison, into ./bundle (ignored by git; at most 60 MiB).
# On a GPU host with no Rust and no network: `bash bundle/run.sh` runs the GPU tests, the
# compute-sanitizer tools (memcheck, racecheck, initcheck, synccheck) over them, the GEMM bench
# briefly, the same GEMMs through torch.matmul, and prints the table last.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-cuda-toolchain.sh >/dev/null
rm -rf bundle && mkdir -p bundle/tests bundle/benches
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
cargo test --release --features cuda --no-run --message-format=json --test cuda_sim --test backend --test cuda_gemm --test cuda_sass --test amp_scaler --test ops_reference | collect bundle/tests
cargo bench --features cuda --no-run --message-format=json --bench gemm --bench amp_kernels | collect bundle/benches
cp scripts/bundle/run.sh scripts/bundle/torch_gemm.py scripts/bundle/table.py bundle/
strip bundle/tests/* bundle/benches/* 2>/dev/null || true
size=$(du -sm bundle | cut -f1)
echo "bundle: ${size} MiB in bundle/"
if [[ $size -gt 60 ]]; then
    echo "bundle exceeds 60 MiB" >&2
    exit 1
fi
