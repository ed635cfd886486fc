"""What the training loop draws its micro-batches from: features in memory, or streamed in blocks.

``TrainData`` gives the loop two things: a seeded order of row numbers for an epoch (the
same on every process and after a resume) and the features of a list of rows. ``Blocks``
holds only a few blocks (cache shards, chunks of gold rows) featurised at a time: an epoch
visits the blocks in a seeded random order, ``window`` blocks at a time, and shuffles rows
within each window, so memory depends on the shard size, not on the cache size.

>>> data = Blocks([3, 2], lambda b: [{"block": b, "row": r} for r in range(3 if b == 0 else 2)], window=1)
>>> sorted(int(i) for i in data.order(seed=0, epoch=0)), len(data)
([0, 1, 2, 3, 4], 5)
>>> data.take([4])
[{'block': 1, 'row': 1}]
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from dora.errors import TrainingError

Feature = dict[str, Any]


class TrainData:
    """Rows the loop trains on (subclasses: ``InMemory``, ``Blocks``)."""

    def __len__(self) -> int:
        raise NotImplementedError

    def order(self, seed: int, epoch: int) -> np.ndarray:
        """Row numbers in the order epoch ``epoch`` visits them."""
        raise NotImplementedError

    def take(self, rows: Sequence[int] | np.ndarray) -> list[Feature]:
        raise NotImplementedError


def _generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


class InMemory(TrainData):
    """A list of features (a labeled set: small by nature), shuffled whole each epoch."""

    def __init__(self, features: Sequence[Feature]) -> None:
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def order(self, seed: int, epoch: int) -> np.ndarray:
        return torch.randperm(len(self.features), generator=_generator(seed, epoch)).numpy()

    def take(self, rows: Sequence[int] | np.ndarray) -> list[Feature]:
        return [self.features[int(i)] for i in rows]


class Blocks(TrainData):
    """Rows in blocks of known sizes, featurised by ``load(block)`` when first needed.

    At most ``window + 1`` blocks are held at once (the window being trained on, plus the next).
    """

    def __init__(self, sizes: Sequence[int], load: Callable[[int], list[Feature]], *, window: int = 4) -> None:
        self.sizes = np.asarray(sizes, np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)])
        self.load = load
        self.window = max(1, window)
        self._held: OrderedDict[int, list[Feature]] = OrderedDict()

    def __len__(self) -> int:
        return int(self.starts[-1])

    def order(self, seed: int, epoch: int) -> np.ndarray:
        g = _generator(seed, epoch)
        blocks = torch.randperm(len(self.sizes), generator=g).numpy()
        parts = []
        for w in range(0, len(blocks), self.window):
            rows = np.concatenate([np.arange(self.starts[b], self.starts[b + 1]) for b in blocks[w : w + self.window]])
            parts.append(rows[torch.randperm(len(rows), generator=g).numpy()])
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def take(self, rows: Sequence[int] | np.ndarray) -> list[Feature]:
        out = []
        for row in rows:
            block = int(np.searchsorted(self.starts, row, side="right")) - 1
            out.append(self._block(block)[int(row) - int(self.starts[block])])
        return out

    def _block(self, block: int) -> list[Feature]:
        if block in self._held:
            self._held.move_to_end(block)
            return self._held[block]
        features = self.load(block)
        if len(features) != self.sizes[block]:
            raise TrainingError(f"block {block} of the training data now has {len(features)} rows, not "
                                f"{self.sizes[block]}: did the cache change during training? Rerun on a fixed cache")
        self._held[block] = features
        while len(self._held) > self.window + 1:
            self._held.popitem(last=False)
        return features
