"""IC3Net's vision square, batched: what every agent sees of a grid world.

Each cell of the (2v+1)^2 window is a one-hot over the cell's class (a location id, or an
`outside` class beyond the border) plus count channels (cars, predators, prey) added on
top. The class part never changes, so it is precomputed (in numpy, once) for every
centre cell; a step only gathers it and adds the counts, in torch on the env's device.
"""

from __future__ import annotations

import numpy as np
import torch


class VisionGrid:
    def __init__(self, classes: np.ndarray, vocab: int, radius: int, outside: int, device="cpu"):
        """classes: (size, size) ints, each cell's class below `vocab`; `outside` pads the
        border; the window reaches `radius` cells (IC3Net's vision) each way."""
        self.size = classes.shape[0]
        self.vocab = vocab
        self.window = 2 * radius + 1
        self.radius = radius
        self.side = self.size + 2 * radius  # the padded grid
        padded = np.pad(classes, radius, constant_values=outside)
        onehot = np.zeros(padded.shape + (vocab,), dtype=np.float32)
        np.put_along_axis(onehot, padded[..., None], 1.0, axis=-1)
        win = np.lib.stride_tricks.sliding_window_view(onehot, (self.window, self.window), axis=(0, 1))
        static = np.ascontiguousarray(win.transpose(0, 1, 3, 4, 2)).reshape(self.size**2, -1)
        self.static_view = torch.tensor(static, device=device)
        dy, dx = np.meshgrid(np.arange(self.window), np.arange(self.window), indexing="ij")
        # window cells, from the top-left, in the padded grid
        self.offsets = torch.from_numpy((dy * self.side + dx).reshape(-1)).to(device)

    @property
    def obs_dim(self) -> int:
        return self.window**2 * self.vocab

    def view(self, cells: torch.Tensor, counts: list[tuple[int, torch.Tensor]]) -> torch.Tensor:
        """(B, N, window^2 * vocab): the window around each of `cells` (B, N, 2), with each
        (channel, positions (B, M, 2)) in `counts` counted into its channel."""
        batch, n = cells.shape[:2]
        v, side = self.radius, self.side
        view = self.static_view[cells[..., 0] * self.size + cells[..., 1]].reshape(batch, n, self.window**2, self.vocab)
        corner = (cells[..., 0] * side + cells[..., 1])[..., None]
        for channel, where in counts:
            grid = torch.zeros((batch, side * side), device=view.device)
            grid.scatter_add_(1, (where[..., 0] + v) * side + where[..., 1] + v,
                              torch.ones(where.shape[:2], device=view.device))
            view[..., channel] += grid.gather(1, (corner + self.offsets).reshape(batch, -1)).reshape(batch, n, -1)
        return view.reshape(batch, n, -1)
