"""The convolutions of benches/conv.rs through torch.nn.functional.conv2d on channels-last
fp16 / bf16 / fp32 (cuDNN), batch 256: fprop, dgrad (torch.nn.grad.conv2d_input) and wgrad
(conv2d_weight); CUDA events, median of 20 runs after 5 warm-up runs. Prints
`torch <pass>_<dtype> <name> <TFLOP/s>` (the names and dtypes of the criterion ids)."""
import statistics
import torch
import torch.nn.functional as F
from torch.nn.grad import conv2d_input, conv2d_weight

LAYERS = [
    ("conv1_7x7s2", 3, 64, 224, 7, 2, 3), ("layer1_3x3", 64, 64, 56, 3, 1, 1),
    ("layer2_3x3s2", 64, 128, 56, 3, 2, 1), ("layer2_down_1x1s2", 64, 128, 56, 1, 2, 0),
    ("layer2_3x3", 128, 128, 28, 3, 1, 1), ("layer3_3x3s2", 128, 256, 28, 3, 2, 1),
    ("layer3_down_1x1s2", 128, 256, 28, 1, 2, 0), ("layer3_3x3", 256, 256, 14, 3, 1, 1),
    ("layer4_3x3s2", 256, 512, 14, 3, 2, 1), ("layer4_down_1x1s2", 256, 512, 14, 1, 2, 0),
    ("layer4_3x3", 512, 512, 7, 3, 1, 1),
]
N = 256
torch.backends.cudnn.benchmark = True
torch.backends.cudnn.allow_tf32 = False


def timed(fn):
    for _ in range(5):
        fn()
    times = []
    for _ in range(20):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    return statistics.median(times)


for dtype, label in [(torch.float16, "f16"), (torch.bfloat16, "bf16"), (torch.float32, "f32")]:
    for name, c, k, h, ks, st, pad in LAYERS:
        x = torch.randn(N, c, h, h, device="cuda", dtype=dtype).to(memory_format=torch.channels_last)
        w = torch.randn(k, c, ks, ks, device="cuda", dtype=dtype).to(memory_format=torch.channels_last)
        y = F.conv2d(x, w, stride=st, padding=pad)
        dy = torch.randn_like(y).contiguous(memory_format=torch.channels_last)
        flops = 2 * N * k * y.shape[2] * y.shape[3] * c * ks * ks
        for pass_, fn in [
            ("fprop", lambda: F.conv2d(x, w, stride=st, padding=pad)),
            ("dgrad", lambda: conv2d_input(x.shape, w, dy, stride=st, padding=pad)),
            ("wgrad", lambda: conv2d_weight(x, w.shape, dy, stride=st, padding=pad)),
        ]:
            print(f"torch {pass_}_{label} {name} {flops / timed(fn) / 1e12:.2f}", flush=True)
