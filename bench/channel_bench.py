"""`ddcl bench channel`: real bits per value of every codec next to the empirical
entropy and the float32 baseline, codec throughput, and noise throughput, in one run."""

from __future__ import annotations

import math
import platform

import numpy as np
import torch

from channel import NoiseKey, codecs, uniform_numpy
from channel.noise import uniform_torch_i64
from channel.codecs import CategoricalModel
from channel.rate import entropy_bits

from .common import rate, table

SCALES = (0.5, 1.0, 3.0, 10.0)
SIZES = (4, 64, 4096)
VALUES_PER_CELL = 1 << 16


def laplace_model(b: float) -> CategoricalModel:
    """The source's own discretized Laplace: the model both ends would agree on."""
    return CategoricalModel.laplace(scale=b, radius=max(16, math.ceil(12 * b)), escape=1e-6)


def throughput(per_codec: dict, m: np.ndarray, budget_s: float) -> list[list]:
    rows = []
    for name, c in per_codec.items():
        data = c.encode(m)
        rows.append([name, m.size, rate(lambda: c.encode(m), m.size, budget_s) / 1e6,
                     rate(lambda: c.decode(data, m.size), m.size, budget_s) / 1e6])
    return rows


def run(budget_s: float = 0.2, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    names = codecs.NAMES
    size_rows, speed_rows = [], []
    for b in SCALES:
        per_codec = {"float32": codecs.get("float32"), "expgolomb": codecs.get("expgolomb"),
                     "rice": codecs.get("rice"), "range": codecs.get("range", model=laplace_model(b))}
        for n in SIZES:
            msgs = np.round(rng.laplace(0, b, (VALUES_PER_CELL // n, n))).astype(np.int64)
            h = entropy_bits(msgs)
            bits = {name: sum(c.encode_bits(m)[1] for m in msgs) / msgs.size for name, c in per_codec.items()}
            range_fixed = (bits["range"] - h) * n  # bits per message above the entropy
            size_rows.append([b, n, h] + [bits[k] for k in names] +
                             [f"{100 * (bits['rice'] / h - 1):+.1f}%", f"{range_fixed:.1f}"])
            if b == 3.0:
                speed_rows += throughput(per_codec, msgs[0], budget_s)
        if b == 3.0:  # one large message: the regime REFERENCE.md section 5 measured
            big = np.round(rng.laplace(0, b, 1 << 20)).astype(np.int64)
            speed_rows += throughput({k: per_codec[k] for k in ("rice", "range")}, big, budget_s)
    key = NoiseKey(1, 2, 3)
    noise_rows = []
    for n in (4096, 1 << 20):
        noise_rows.append(["numpy", n, rate(lambda: uniform_numpy(n, key, 7), n, budget_s) / 1e6])
        noise_rows.append(["torch int64, cpu", n, rate(lambda: uniform_torch_i64(n, key, 7, 0, "cpu"), n, budget_s) / 1e6])
        if torch.cuda.is_available():
            def cuda_noise():
                uniform_torch_i64(n, key, 7, 0, "cuda")
                torch.cuda.synchronize()
            noise_rows.append(["torch int64, cuda", n, rate(cuda_noise, n, budget_s) / 1e6])
    out = [
        f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"numpy {np.__version__}, torch {torch.__version__}",
        "",
        "Bits per value, round(Laplace(0, b)); float32 is the baseline; range uses the source's model",
        table(["b", "values/msg", "entropy"] + list(names) + ["rice vs H", "range fixed bits/msg"], size_rows),
        "",
        "Codec throughput, b = 3 (million values/s)",
        table(["codec", "values/msg", "encode", "decode"], speed_rows),
        "",
        "Noise throughput (million uniforms/s)",
        table(["implementation", "uniforms/call", "M/s"], noise_rows),
    ]
    return "\n".join(out)
