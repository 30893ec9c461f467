#!/usr/bin/env bash
# Side-by-side CPU training-step throughput: hemi (fp32, bf16 autocast, fp16 autocast) against
# PyTorch (the same three; fp16 over TORCH_FP16_STEPS steps, default 2), same model (ResNet-18), optimizer (Adam), batch and thread
# count, interleaved config by config so both see the same machine state. Prints one table with
# the ratios. Not part of CI (it downloads PyTorch: a few GB). On AMX CPUs fp16 is also timed
# with HEMI_CPU_NO_F16_AMX=1, on AVX2-only CPUs bf16 and fp16 with HEMI_CPU_NO_AVX2_GEMM=1
# (their GEMMs on the gemm crate): one line each after the table.
#
#   bash scripts/compare-torch-cpu.sh                 # the issue's three configs, 2 threads
#   STEPS=6 THREADS=2 ROUNDS=3 CONFIGS="8x64 4x32 2x224" bash scripts/compare-torch-cpu.sh
#
# Each cell is the median over ROUNDS rounds (this VM's throughput drifts by 2x between minutes,
# for both engines: one round is not a measurement).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-torch
STEPS="${STEPS:-6}"
THREADS="${THREADS:-2}"
CONFIGS="${CONFIGS:-8x64 4x32 2x224}"
ROUNDS="${ROUNDS:-3}"
TORCH_FP16_STEPS="${TORCH_FP16_STEPS:-2}"

# torch + torchvision from PyPI into an ignored venv (idempotent).
if ! "$VENV/bin/python" -c "import torch, torchvision" >/dev/null 2>&1; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q torch torchvision
fi

cargo build --release -q --bench train_step_compare
BIN=$(ls -t target/release/deps/train_step_compare-* | grep -v '\.d$' | head -1)

AMX=$(grep -m1 -o amx_tile /proc/cpuinfo || true)
AVX512=$(grep -m1 -o avx512f /proc/cpuinfo || true)
out=$(mktemp)
for round in $(seq "$ROUNDS"); do
    for cfg in $CONFIGS; do
        b=${cfg%x*}; s=${cfg#*x}
        for amp in off bf16 fp16; do
            RAYON_NUM_THREADS=$THREADS "$BIN" --batch "$b" --image "$s" --steps "$STEPS" --amp "$amp" >>"$out"
            if [ "$amp" = fp16 ] && [ -n "$AMX" ]; then
                # On AMX CPUs also the fp16 GEMMs on the AVX-512 kernel instead of split tiles.
                HEMI_CPU_NO_F16_AMX=1 RAYON_NUM_THREADS=$THREADS "$BIN" --batch "$b" --image "$s" \
                    --steps "$STEPS" --amp fp16 | sed 's/ fp16 / fp16-avx512 /' >>"$out"
            fi
            if [ "$amp" != off ] && [ -z "$AVX512" ]; then
                # On AVX2-only CPUs also the half GEMMs without our AVX2 kernel (operands
                # widened and weights rounded into copies for the gemm crate).
                HEMI_CPU_NO_AVX2_GEMM=1 RAYON_NUM_THREADS=$THREADS "$BIN" --batch "$b" --image "$s" \
                    --steps "$STEPS" --amp "$amp" | sed "s/ $amp / $amp-crate /" >>"$out"
            fi
            # PyTorch's fp16 autocast on the CPU is one to two orders of magnitude slower than
            # its fp32 here: a few steps say so.
            steps=$STEPS
            if [ "$amp" = fp16 ]; then steps=$TORCH_FP16_STEPS; fi
            CUDA_VISIBLE_DEVICES= PYTHONWARNINGS=ignore OMP_NUM_THREADS=$THREADS "$VENV/bin/python" scripts/torch_cpu_step.py \
                --batch "$b" --image "$s" --steps "$steps" --amp "$amp" --threads "$THREADS" >>"$out"
        done
    done
done
python3 - "$out" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    # "RESULT engine config amp img_per_s"
    p = line.split()
    if len(p) == 5 and p[0] == "RESULT":
        runs.setdefault((p[1], p[2], p[3]), []).append(float(p[4]))
rows = {k: statistics.median(v) for k, v in runs.items()}
cfgs = list(dict.fromkeys(k[1] for k in runs))  # in the order they ran
print(f"| config (batch x px) | hemi fp32 | hemi bf16 | hemi fp16 | torch fp32 | torch bf16 | torch fp16 | hemi/torch fp32 | hemi bf16/fp32 | hemi fp16/fp32 | torch bf16/fp32 | torch fp16/fp32 |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for c in cfgs:
    g = lambda e, a: rows.get((e, c, a), float("nan"))
    hf, hb, hh, tf, tb, th = g("hemi", "off"), g("hemi", "bf16"), g("hemi", "fp16"), g("torch", "off"), g("torch", "bf16"), g("torch", "fp16")
    print(f"| {c} | {hf:.2f} | {hb:.2f} | {hh:.2f} | {tf:.2f} | {tb:.2f} | {th:.2f} | {hf/tf:.2f}x | {hb/hf:.2f}x | {hh/hf:.2f}x | {tb/tf:.2f}x | {th/tf:.2f}x |")
for c in cfgs:
    # AMX CPUs only: fp16 with its GEMMs on the AVX-512 kernel (HEMI_CPU_NO_F16_AMX=1).
    v = rows.get(("hemi", c, "fp16-avx512"))
    if v is not None:
        print(f"{c}: hemi fp16 without f16 AMX tiles {v:.2f} img/s = {v / rows[('hemi', c, 'off')]:.2f}x hemi fp32")
for c in cfgs:
    # AVX2-only CPUs: bf16 and fp16 with their GEMMs on the gemm crate (HEMI_CPU_NO_AVX2_GEMM=1).
    for a in ("bf16", "fp16"):
        v = rows.get(("hemi", c, a + "-crate"))
        if v is not None:
            print(f"{c}: hemi {a} without the AVX2 half GEMM {v:.2f} img/s = {v / rows[('hemi', c, 'off')]:.2f}x hemi fp32")
print(f"(images/s: per run the median of the timed steps after one warm-up step; per cell the median of {max(len(v) for v in runs.values())} interleaved runs)")
PY
rm -f "$out"
