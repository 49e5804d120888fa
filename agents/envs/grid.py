"""IC3Net's vision square, batched: what every agent sees of a grid world.

Each cell of the (2v+1)^2 window is a one-hot over the cell's class (a location id, or an
`outside` class beyond the border) plus count channels (cars, predators, prey) added on
top. The class part never changes, so it is precomputed for every centre cell; a step
only gathers it and adds the counts.
"""

from __future__ import annotations

import numpy as np


class VisionGrid:
    def __init__(self, classes: np.ndarray, vocab: int, radius: int, outside: int):
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
        self.static_view = np.ascontiguousarray(win.transpose(0, 1, 3, 4, 2)).reshape(self.size**2, -1)
        dy, dx = np.meshgrid(np.arange(self.window), np.arange(self.window), indexing="ij")
        self.offsets = (dy * self.side + dx).reshape(-1)  # window cells, from the top-left, padded

    @property
    def obs_dim(self) -> int:
        return self.window**2 * self.vocab

    def view(self, cells: np.ndarray, counts: list[tuple[int, np.ndarray]]) -> np.ndarray:
        """(B, N, window^2 * vocab): the window around each of `cells` (B, N, 2), with each
        (channel, positions (B, M, 2)) in `counts` counted into its channel."""
        batch, n = cells.shape[:2]
        v, side = self.radius, self.side
        view = self.static_view[cells[..., 0] * self.size + cells[..., 1]].reshape(batch, n, self.window**2, self.vocab)
        corner = (cells[..., 0] * side + cells[..., 1])[..., None]
        rows = np.arange(batch)[:, None]
        for channel, where in counts:
            grid = np.zeros((batch, side * side), dtype=np.float32)
            np.add.at(grid, (rows, (where[..., 0] + v) * side + where[..., 1] + v), 1.0)
            view[..., channel] += grid[rows[..., None], corner + self.offsets]
        return view.reshape(batch, n, -1)
