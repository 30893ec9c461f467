"""One ResNet-18 training step at batch 256, 224 px, in PyTorch eager AMP (fp16 autocast +
GradScaler, channels-last, Adam): median step time of 10 after 3 warm-up steps, and peak
memory. Prints `torch_amp_step <images/s> <peak MiB>`."""
import statistics
import time
import torch
import torchvision

torch.backends.cudnn.benchmark = True
model = torchvision.models.resnet18(num_classes=1000).cuda().to(memory_format=torch.channels_last)
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
scaler = torch.amp.GradScaler("cuda")
x = torch.randn(256, 3, 224, 224, device="cuda").to(memory_format=torch.channels_last)
y = torch.randint(0, 1000, (256,), device="cuda")


def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.float16):
        loss = torch.nn.functional.cross_entropy(model(x), y)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()


for _ in range(3):
    step()
torch.cuda.synchronize()
torch.cuda.reset_peak_memory_stats()
times = []
for _ in range(10):
    t = time.perf_counter()
    step()
    torch.cuda.synchronize()
    times.append(time.perf_counter() - t)
print(f"torch_amp_step {256 / statistics.median(times):.1f} {torch.cuda.max_memory_allocated() / 2**20:.1f}")
