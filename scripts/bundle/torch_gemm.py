"""The GEMMs of benches/gemm.rs through torch.matmul (fp16, bf16, fp32): CUDA events,
median of 50 runs after 10 warm-up runs. Prints `torch <dtype> <name> <TFLOP/s>`."""
import statistics
import torch

SHAPES = [
    ("square_1024", 1024, 1024, 1024), ("square_2048", 2048, 2048, 2048),
    ("square_4096", 4096, 4096, 4096), ("square_8192", 8192, 8192, 8192),
    ("fc_32x512x1000", 32, 1000, 512), ("conv1_7x7", 32 * 112 * 112, 64, 147),
    ("layer1_3x3", 32 * 56 * 56, 64, 576), ("layer2_3x3", 32 * 28 * 28, 128, 1152),
    ("layer3_3x3", 32 * 14 * 14, 256, 2304), ("layer4_3x3", 32 * 7 * 7, 512, 4608),
]
torch.backends.cuda.matmul.allow_tf32 = False
for dtype, label in [(torch.float16, "f16"), (torch.bfloat16, "bf16"), (torch.float32, "f32")]:
    for name, m, n, k in SHAPES:
        a = torch.randn(m, k, device="cuda", dtype=dtype)
        b = torch.randn(n, k, device="cuda", dtype=dtype).t()
        for _ in range(10):
            torch.matmul(a, b)
        times = []
        for _ in range(50):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            torch.matmul(a, b)
            e.record()
            torch.cuda.synchronize()
            times.append(s.elapsed_time(e) / 1e3)
        t = statistics.median(times)
        print(f"torch {label} {name} {2 * m * n * k / t / 1e12:.2f}", flush=True)
