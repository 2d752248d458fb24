#!/usr/bin/env python3
"""Generate the four layer trees of big:1, reproducibly (seeded MT19937).

Usage: genbig.py OUTDIR [--scale F]

OUTDIR/{small,medium,large,mixed}/ receive:
  small   12,000 files of 0.5-64 KiB
  medium     800 files of 64 KiB-1 MiB
  large       12 files of 8-48 MiB
  mixed      600 files of 1 KiB-4 MiB
Sizes are log-uniform between the bounds. Half of the files are random bytes, half
word-salad text (gzip ratio about 0.45); about 1.02 GB in all. --scale shrinks the file counts for a quick try.
"""
import math
import os
import random
import sys

LAYERS = [  # name, files, min bytes, max bytes, files per directory
    ("small", 12000, 512, 64 << 10, 250),
    ("medium", 800, 64 << 10, 1 << 20, 100),
    ("large", 12, 8 << 20, 48 << 20, 12),
    ("mixed", 600, 1 << 10, 4 << 20, 60),
]


def text_pool(rng, size):
    """Word salad: a vocabulary of random lowercase words with a skewed frequency."""
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    weights = [12, 9, 8, 8, 7, 7, 6, 6, 6, 4, 4, 3, 3, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1]
    vocab = ["".join(rng.choices(letters, weights, k=rng.randint(2, 11))) for _ in range(5000)]
    out, n = [], 0
    while n < size:
        line = " ".join(rng.choices(vocab, k=rng.randint(6, 16)))
        line = line[0].upper() + line[1:] + ".\n"
        out.append(line)
        n += len(line)
    return "".join(out).encode()[:size]


def main():
    outdir = sys.argv[1]
    scale = float(sys.argv[sys.argv.index("--scale") + 1]) if "--scale" in sys.argv else 1.0
    rng = random.Random(20231114)
    pool = text_pool(rng, 16 << 20)
    for name, count, lo, hi, per_dir in LAYERS:
        count = max(1, int(count * scale))
        for i in range(count):
            size = int(math.exp(rng.uniform(math.log(lo), math.log(hi))))
            d = os.path.join(outdir, name, "data", f"d{i // per_dir:03d}")
            os.makedirs(d, exist_ok=True)
            if i % 2 == 0:
                data = rng.randbytes(size)
                suffix = "bin"
            else:
                # pieces of the pool at random offsets: text-like, but not one repeated block
                parts, left = [], size
                while left > 0:
                    n = min(left, rng.randint(4 << 10, 64 << 10))
                    off = rng.randrange(0, len(pool) - n)
                    parts.append(pool[off:off + n])
                    left -= n
                data = b"".join(parts)
                suffix = "txt"
            with open(os.path.join(d, f"f{i:05d}.{suffix}"), "wb") as f:
                f.write(data)


if __name__ == "__main__":
    main()
