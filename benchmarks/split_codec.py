"""Entropy-coder speed and size on feature-like symbols, side by side with zlib in one run.

Why here and not in a test: speed depends on the machine and its load; what is comparable is the
ratio to a baseline measured in the same run. Prints, per codec: encode and decode median time
(``measure_latency``), their ratio to zlib's, and coded bits per symbol.

Usage:
    .venv/bin/python benchmarks/split_codec.py [--shape 64,64,8,8] [--qbins 16]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="64,64,8,8")
    p.add_argument("--qbins", type=int, default=16)
    args = p.parse_args(argv)
    from quantbench.measure.latency import measure_latency
    from quantbench.splitting import codec as C

    shape = tuple(int(v) for v in args.shape.split(","))
    rng = np.random.default_rng(0)
    # channel-skewed symbols: each channel has its own geometric-like distribution (as ReLU features do)
    p_stop = rng.uniform(0.2, 0.9, size=(1, shape[1], 1, 1))
    x = np.minimum(rng.geometric(np.broadcast_to(p_stop, shape)) - 1, args.qbins - 1).astype(np.uint8)
    rows = []
    for codec in C.available_codecs():
        blob = C.encode(x, args.qbins, codec)
        enc = measure_latency(lambda c=codec: C.encode(x, args.qbins, c), batch_size=1, min_time_s=0.5, min_iters=3)
        dec = measure_latency(lambda b=blob: C.decode(b), batch_size=1, min_time_s=0.5, min_iters=3)
        rows.append((codec, enc.median_ms, dec.median_ms, 8 * len(blob) / x.size))
    base = {r[0]: r for r in rows}["zlib"]
    print(f"{x.size} symbols, shape {shape}, qbins {args.qbins}; order-0 entropy "
          f"{C.order0_entropy_bits(x, args.qbins) / x.size:.3f} bits/symbol")
    print(f"{'codec':<28}{'encode ms':>10}{'x zlib':>8}{'decode ms':>11}{'x zlib':>8}{'bits/sym':>10}")
    for codec, e, d, bps in rows:
        print(f"{codec:<28}{e:>10.2f}{e / base[1]:>8.2f}{d:>11.2f}{d / base[2]:>8.2f}{bps:>10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
