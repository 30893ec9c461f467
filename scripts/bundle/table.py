"""Joins criterion's GEMM output with torch_gemm.py's and prints hemi vs PyTorch TFLOP/s."""
import sys

from criterion_out import throughputs

hemi = throughputs(sys.argv[1], r"gemm_cuda/(\S+)/(\S+)")
torch = {}
for line in open(sys.argv[2]):
    parts = line.split()
    if len(parts) == 4 and parts[0] == "torch":
        torch[(parts[1], parts[2])] = float(parts[3])
dtype_of = {"wmma_f16": "f16", "mma_f16": "f16", "mma_bf16": "bf16", "simt_f32": "f32"}
print(f"{'kernel':10} {'shape':16} {'hemi TFLOP/s':>13} {'torch TFLOP/s':>14} {'ratio':>7}")
for (kernel, shape), v in sorted(hemi.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    t = torch.get((dtype_of.get(kernel, "?"), shape), float("nan"))
    print(f"{kernel:10} {shape:16} {v:13.2f} {t:14.2f} {v / t if t else float('nan'):7.2f}")
f16 = {s: v for (k, s), v in hemi.items() if k == "mma_f16"}
f32 = {s: v for (k, s), v in hemi.items() if k == "simt_f32"}
for s in sorted(set(f16) & set(f32)):
    print(f"fp16/fp32 ratio (mma_f16 vs simt_f32) {s}: {f16[s] / f32[s]:.1f}x")
