#!/usr/bin/env bash
# Runs on a GPU host (no Rust needed): the CUDA tests, compute-sanitizer's memcheck, racecheck,
# initcheck and synccheck over the GPU test binaries, the GEMM bench briefly, the same GEMMs
# through torch.matmul, then prints the comparison table last.
set -uo pipefail
cd "$(dirname "$0")"
[[ -f bin.tar.gz ]] && tar -xzf bin.tar.gz
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || echo "nvidia-smi not found"
# NCCL for tests/nccl (hemi loads it at run time): PyTorch's nvidia-nccl wheel, if present.
if [[ -z ${HEMI_NCCL_LIB:-} ]]; then
    lib=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib", "libnccl.so.2"))' 2>/dev/null)
    [[ -n $lib && -f $lib ]] && export HEMI_NCCL_LIB=$lib
fi
pass=0; fail=0
for t in tests/*; do
    echo "== $t"
    if "./$t" --test-threads=1 2>&1 | tail -n 25; then pass=$((pass + 1)); else fail=$((fail + 1)); fi
done
echo "test binaries: $pass passed, $fail failed"
# The device-side counterparts of the emulator's checkers (README, "Testing"); each tool's
# summary line goes to sanitizer.txt for the table.
: > sanitizer.txt
if command -v compute-sanitizer >/dev/null 2>&1; then
    # memcheck over both GPU suites; the slower hazard tools over the GEMM suite (cp.async,
    # ldmatrix, mma: the kernels with shared-memory pipelines). 60 s each at most.
    for tool in memcheck racecheck initcheck synccheck; do
        for t in tests/cuda_gemm tests/backend; do
            [[ -x $t ]] || continue
            [[ $tool != memcheck && $t == tests/backend ]] && continue
            log="sanitizer-$tool-$(basename "$t").txt"
            timeout 60 compute-sanitizer --tool "$tool" --error-exitcode 99 --print-limit 20 \
                "./$t" --test-threads=1 >"$log" 2>&1
            rc=$?
            summary=$(grep -E "(ERROR|RACECHECK) SUMMARY" "$log" | tail -n 1)
            echo "compute-sanitizer $tool $(basename "$t"): exit $rc; ${summary:-no summary (see $log)}" | tee -a sanitizer.txt
        done
    done
else
    echo "compute-sanitizer not found: device-side checks skipped" | tee -a sanitizer.txt
fi
echo "== gemm bench (brief)"
./benches/gemm --bench gemm_cuda --warm-up-time 0.5 --measurement-time 1 2>&1 | tee gemm.txt | grep -E "gemm_cuda|thrpt|skipping" || true
echo "== amp kernels bench (brief)"
./benches/amp_kernels --bench --warm-up-time 0.5 --measurement-time 1 2>&1 | grep -E "amp_kernels|thrpt" || true
echo "== conv bench (brief)"
./benches/conv --bench conv_cuda --warm-up-time 0.3 --measurement-time 1 2>&1 | tee conv.txt | grep -E "conv_cuda|thrpt|skipping" || true
echo "== ResNet-18 steps, batch 256, 224 px"
: > steps.txt
for amp in off fp16; do
    # AMP runs channels-last (the Tensor-Core convolutions, as PyTorch's baseline); fp32 NCHW.
    cl=$([[ $amp == off ]] && echo "" || echo "--channels-last")
    line=$(./examples/resnet18_amp --device cuda --batch-size 256 --image-size 224 --epochs 3 --amp $amp $cl 2>&1 | tee -a steps.log | grep "^done:")
    ips=$(echo "$line" | sed -n 's/.* \([0-9.]*\) images\/s.*/\1/p')
    mib=$(echo "$line" | sed -n 's/.*peak memory \([0-9.]*\) MiB.*/\1/p')
    name=$([[ $amp == off ]] && echo hemi_fp32_step || echo hemi_amp_step)
    echo "$name ${ips:-nan} ${mib:-nan}" | tee -a steps.txt
done
python3 torch_resnet_step.py | tee -a steps.txt
echo "== torch.matmul"
python3 torch_gemm.py | tee torch.txt
echo "== torch conv2d (cuDNN, channels-last)"
python3 torch_conv.py | tee torch_conv.txt
python3 table.py gemm.txt torch.txt
python3 conv_table.py conv.txt torch_conv.txt steps.txt
echo "== compute-sanitizer summary"
cat sanitizer.txt
