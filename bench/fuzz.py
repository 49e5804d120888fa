"""`ddcl bench fuzz`: random and mutated bytes into frame.unpack and every codec's decode.

Anything but a ChannelError is a bug; the pass reports how many inputs ran and how many
were accepted or rejected.
"""

from __future__ import annotations

import time

import numpy as np

from channel import ChannelError, codecs, frame


def run(inputs: int = 100_000, seed: int = 0, progress=print) -> dict:
    rng = np.random.default_rng(seed)
    coders = {cid: cls() for cid, cls in codecs.BY_WIRE_ID.items()}
    valid = []
    for name in codecs.NAMES:
        c = codecs.get(name)
        for n in (0, 1, 4, 37, 700):
            v = np.round(rng.laplace(0, 3, n))
            v[::97] *= 1e5  # outliers: escapes and long codes get mutated too
            valid.append(frame.pack(kind=0, sender=2, codec=c.wire_id, count=n, payload=c.encode(v)))
    stats = {"inputs": 0, "accepted": 0, "rejected": 0, "bugs": []}
    start = time.perf_counter()
    for i in range(inputs):
        if i % 2:
            data = rng.bytes(int(rng.integers(0, 48)))
        else:
            data = bytearray(valid[int(rng.integers(len(valid)))])
            for _ in range(int(rng.integers(1, 4))):
                op = rng.integers(3)
                if op == 0 and data:
                    data[int(rng.integers(len(data)))] ^= 1 << int(rng.integers(8))
                elif op == 1 and data:
                    del data[int(rng.integers(len(data))):]
                else:
                    data += rng.bytes(int(rng.integers(1, 4)))
            data = bytes(data)
        try:
            f = frame.unpack(data)
            coders[f.codec].decode(f.payload, f.count)
            stats["accepted"] += 1
        except ChannelError:
            stats["rejected"] += 1
        except Exception as e:  # noqa: BLE001 - counting the bugs is the point
            stats["bugs"].append(f"{type(e).__name__}: {e} on {data.hex()}")
        stats["inputs"] += 1
        if progress and (i + 1) % 20_000 == 0:
            progress(f"  {i + 1} inputs, {time.perf_counter() - start:.1f}s")
    return stats
