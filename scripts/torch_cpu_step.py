"""One ResNet-18 training step in PyTorch on the CPU (the reference of
scripts/compare-torch-cpu.sh): torchvision's resnet18 (1000 classes), Adam, cross-entropy on a
random batch, optionally under bf16/fp16 autocast (fp16 with a GradScaler). Prints
`RESULT torch BxS AMP img_per_s` (median of the timed steps after one warm-up step)."""
import argparse
import warnings

warnings.filterwarnings("ignore")
import statistics
import time

import torch
import torchvision

p = argparse.ArgumentParser()
p.add_argument("--batch", type=int, default=8)
p.add_argument("--image", type=int, default=64)
p.add_argument("--steps", type=int, default=6)
p.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"])
p.add_argument("--threads", type=int, default=2)
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
model = torchvision.models.resnet18(num_classes=1000)
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
x = torch.randn(a.batch, 3, a.image, a.image)
y = torch.randint(0, 1000, (a.batch,))
dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(a.amp)
scaler = torch.amp.GradScaler("cpu", enabled=a.amp == "fp16")


def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        loss = torch.nn.functional.cross_entropy(model(x), y)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()


times = []
for i in range(a.steps + 1):
    t0 = time.perf_counter()
    step()
    if i > 0:
        times.append(time.perf_counter() - t0)
print(f"RESULT torch {a.batch}x{a.image} {a.amp} {a.batch / statistics.median(times):.3f}")
