"""Writes scikit-learn's bundled handwritten digits (UCI optdigits test set: 1797 images of
8 x 8 pixels, values 0-16, ten classes; the file ships inside the scikit-learn package, so
nothing is downloaded) as MNIST-style IDX files, so `examples/train.rs --format mnist` reads
them: pixels scaled to 0-255, the first 1500 images for training and the other 297 for test.

    python3 scripts/digits-to-idx.py OUT_DIR        # needs `pip install scikit-learn`
"""
import gzip
import os
import struct
import sys

import sklearn

out = sys.argv[1] if len(sys.argv) > 1 else "data/digits"
src = os.path.join(os.path.dirname(sklearn.__file__), "datasets", "data", "digits.csv.gz")
rows = [list(map(float, line.split(","))) for line in gzip.open(src, "rt") if line.strip()]
os.makedirs(out, exist_ok=True)


def idx(path, dims, values):
    with open(path, "wb") as f:
        f.write(bytes([0, 0, 8, len(dims)]))
        for d in dims:
            f.write(struct.pack(">I", d))
        f.write(bytes(values))


for split, part in (("train", rows[:1500]), ("t10k", rows[1500:])):
    pixels = [min(255, round(v * 255 / 16)) for r in part for v in r[:64]]
    idx(os.path.join(out, f"{split}-images-idx3-ubyte"), [len(part), 8, 8], pixels)
    idx(os.path.join(out, f"{split}-labels-idx1-ubyte"), [len(part)], [int(r[64]) for r in part])
print(f"{out}: {len(rows[:1500])} training and {len(rows[1500:])} test images of 8x8")
