"""`ddcl bench corrupt`: what one flipped payload bit does to a message, per codec: the
receiver's path exactly (frame unpack, then the codec's decode with the header's count),
on messages drawn like trained ones (a discretized Laplace source of scale 1). Each
outcome is one of: caught (a ChannelError: the receiver counts a bad frame and hears
silence), intact (the same values: a flip in padding), or silent (other values decoded
without complaint, the case the frame cannot see)."""

from __future__ import annotations

import numpy as np

from channel import ChannelError, codecs, frame
from broker.faults import flipped
from channel.codecs import CategoricalModel

from .common import table

SCALE = 1.0  # trained messages sit within a few steps of zero
WIDTHS = (4, 128)  # the goal toy's message, a Traffic Junction batch's


def outcomes(codec, width: int, trials: int, rng: np.random.Generator) -> dict:
    caught = intact = silent = wrong = 0
    errors = []
    for _ in range(trials):
        m = np.clip(np.round(rng.laplace(0, SCALE, width)), -16, 16).astype(np.int64)
        payload = codec.encode(m)
        data = frame.pack(kind=frame.Kind.MESSAGE, sender=0, codec=codec.wire_id, count=width, payload=payload)
        header = len(data) - len(payload)
        bad = flipped(data, 8 * header + int(rng.integers(8 * len(payload))))
        try:
            got = np.asarray(codec.decode(frame.unpack(bad).payload, width))
        except ChannelError:
            caught += 1
            continue
        diff = got.astype(np.float64) - m
        if not diff.any():
            intact += 1
            continue
        silent += 1
        wrong += int(np.count_nonzero(diff))
        errors.append(float(np.abs(diff).max()))
    return {"caught": caught / trials, "intact": intact / trials, "silent": silent / trials,
            "wrong_values": wrong / max(silent, 1), "median_error": float(np.median(errors)) if errors else 0.0}


def run(trials: int = 2000, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    model = CategoricalModel.laplace(scale=SCALE, radius=16, escape=1e-4)
    rows = []
    for name in codecs.NAMES:
        codec = codecs.get(name, model=model) if name == "range" else codecs.get(name)
        for width in WIDTHS:
            o = outcomes(codec, width, trials, rng)
            rows.append([name, width, o["caught"], o["intact"], o["silent"], o["wrong_values"], f"{o['median_error']:.3g}"])
    return "\n".join([
        f"one random payload bit flipped in each of {trials} messages per row (Laplace scale {SCALE}, seed {seed})",
        "caught: the receiver's decode raised (a bad frame, heard as silence); silent: other values, no error",
        "",
        table(["codec", "values", "caught", "intact", "silent", "wrong values / silent msg",
               "median of max |error| (steps)"], rows),
    ])
