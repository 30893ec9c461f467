"""Joins criterion's conv output (conv.txt) with torch_conv.py's (torch_conv.txt) and the
ResNet-18 step lines (steps.txt), and prints hemi vs cuDNN TFLOP/s and the step table."""
import sys

from criterion_out import throughputs

hemi = throughputs(sys.argv[1], r"conv_cuda/(\S+)/(\S+?)_cuda:\d+")
torch = {}
for line in open(sys.argv[2]):
    p = line.split()
    if len(p) == 4 and p[0] == "torch":
        torch[(p[1], p[2])] = float(p[3])
print(f"{'pass':12} {'layer':20} {'hemi TFLOP/s':>13} {'cuDNN TFLOP/s':>14} {'ratio':>7}")
for key in sorted(set(hemi) | set(torch), key=lambda k: (k[1], k[0])):
    h, t = hemi.get(key, float("nan")), torch.get(key, float("nan"))
    print(f"{key[0]:12} {key[1]:20} {h:13.2f} {t:14.2f} {h / t if t else float('nan'):7.2f}")
steps = {}
for line in open(sys.argv[3]):
    p = line.split()
    if len(p) == 3 and p[0] in ("hemi_fp32_step", "hemi_amp_step", "torch_amp_step"):
        steps[p[0]] = (float(p[1]), float(p[2]))
print(f"\n{'ResNet-18 step, batch 256, 224 px':36} {'images/s':>9} {'peak MiB':>9}")
for k in ("hemi_fp32_step", "hemi_amp_step", "torch_amp_step"):
    v = steps.get(k, (float("nan"), float("nan")))
    print(f"{k:36} {v[0]:9.1f} {v[1]:9.1f}")
if "hemi_amp_step" in steps and "torch_amp_step" in steps and "hemi_fp32_step" in steps:
    a, f, t = steps["hemi_amp_step"], steps["hemi_fp32_step"], steps["torch_amp_step"]
    print(f"hemi AMP / PyTorch AMP: {a[0] / t[0]:.2f}x (target >= 0.8)   hemi AMP / hemi fp32: "
          f"{a[0] / f[0]:.2f}x (target >= 2)   AMP / fp32 peak memory: {a[1] / f[1]:.2f} (target <= 0.6)")
