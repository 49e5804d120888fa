"""`python -m bench.layer_bench`: what the DDCL layer costs per call next to a bare
nn.Linear(dim, dim) on the same messages, in the same run, as ratios.

Per shape (B messages of dim values) and codec: the linear layer's forward (the
baseline), DDCL's forward (dither + quantize, gradient on), forward + rate_loss, and
forward + bits() (the real bitstream, encoded on the CPU). Each variant is timed in
alternating rounds and the median round kept, so load from other processes falls on
all of them alike.
"""

from __future__ import annotations

import platform
import statistics

import torch
from torch import nn

from channel import load_kernels
from channel.torch import DDCL

from .common import rate, table

SHAPES = ((1, 4), (256, 4), (256, 128))
CODECS = (("expgolomb", "surrogate"), ("range", "expected"))  # the range codec's model: the learned prior


def variants(batch: int, dim: int, codec: str, loss: str, device: str) -> dict:
    torch.manual_seed(0)
    z = torch.randn(batch, dim, device=device, requires_grad=True)
    linear = nn.Linear(dim, dim).to(device)
    ddcl = DDCL(dim, delta=0.2, codec=codec, rate_loss=loss).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    step = iter(range(10**12))  # a new step each call: the dither is drawn anew, as in training

    def linear_forward():
        linear(z)
        sync()

    def forward():
        ddcl(z, next(step), 0)
        sync()

    def forward_rate():
        ddcl(z, next(step), 0)
        ddcl.rate_loss()
        sync()

    def forward_bits():
        ddcl(z, next(step), 0)
        ddcl.bits()

    return {"linear": linear_forward, "ddcl forward": forward, "forward + rate_loss": forward_rate,
            "forward + bits": forward_bits}


def run(budget_s: float = 0.1, rounds: int = 5, devices=None) -> str:
    load_kernels()
    devices = devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        for batch, dim in SHAPES:
            for codec, loss in CODECS:
                fns = variants(batch, dim, codec, loss, device)
                times: dict[str, list[float]] = {name: [] for name in fns}
                for _ in range(rounds):  # alternating: each round times every variant once
                    for name, fn in fns.items():
                        times[name].append(1e6 / rate(fn, 1, budget_s))
                us = {name: statistics.median(t) for name, t in times.items()}
                base = us["linear"]
                rows.append([device, f"{batch}x{dim}", f"{codec} / {loss}", base, us["ddcl forward"],
                             us["forward + rate_loss"], us["forward + bits"],
                             f"{us['ddcl forward'] / base:.1f}x", f"{us['forward + bits'] / base:.1f}x"])
    head = (f"DDCL layer per call against nn.Linear(dim, dim) on the same z (gradient on), median of {rounds} "
            f"alternating rounds; {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    return head + "\n" + table(["device", "B x dim", "codec / rate loss", "linear us", "forward us",
                                "+rate_loss us", "+bits us", "forward/linear", "(forward+bits)/linear"], rows)
