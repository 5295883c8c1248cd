"""Mini-batches for training and evaluation: of a jkt ``Split`` (:class:`Batches`, uint8 until the device, then
normalised) or of a torch ``Dataset``/``DataLoader`` (:class:`TorchBatches`), both seeded the same way and both
yielding ``(x, y, idx)`` with ``idx`` the items' rows, to gather cached teacher outputs."""
from __future__ import annotations

import math

import torch

from .data import Dataset, Split


class Batches:
    """Mini-batches ``(x_normalised, y, idx)`` on ``device``; no workers, uint8 until the device.

    ``idx`` (int64, on the CPU, which indexes both CPU and GPU tensors) holds the rows of
    ``split`` in the batch, to gather cached teacher outputs.  Shuffling draws a new
    permutation each epoch from one ``torch.Generator`` seeded with ``seed``, so a given
    seed gives the same order of epochs everywhere; ``seed=None`` is non-deterministic.
    """

    def __init__(self, split: Split, dataset: Dataset, batch_size: int, device, shuffle: bool,
                 seed: int | None = None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
        self.split, self.dataset, self.batch_size = split, dataset, batch_size
        self.device, self.shuffle = torch.device(device), shuffle
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(len(self.split) / self.batch_size)

    def __iter__(self):
        n = len(self.split)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size]
            rows = idx.to(self.split.x.device)
            x = self.split.x[rows].to(self.device, non_blocking=True)
            y = self.split.y[rows].to(self.device, non_blocking=True)
            yield self.dataset.normalize(x), y, idx


class _WithIndex(torch.utils.data.Dataset):
    """``(x, y, i)`` for item ``i`` of a dataset of ``(x, y, ...)`` items."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        item = self.dataset[i]
        return item[0], torch.as_tensor(item[1]), i


class _Permutations(torch.utils.data.Sampler):
    """One ``torch.randperm`` of the items per epoch from ``generator`` (the order :class:`Batches` draws)."""

    def __init__(self, n: int, generator: torch.Generator):
        self.n, self.generator = n, generator

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return iter(torch.randperm(self.n, generator=self.generator).tolist())


class TorchBatches:
    """Mini-batches ``(x, y, idx)`` on ``device`` from a ``torch.utils.data.Dataset`` of ``(x, y)`` items, or from a
    ``DataLoader`` (its dataset, batch size and workers are kept): what jkt's training reads from your data.
    ``idx`` holds the items' positions, to gather cached teacher outputs (which must then come from the same
    items: no random augmentation). Shuffling is seeded as in :class:`Batches` (the same ``seed`` gives the same
    order as a Batches of the same size)."""

    def __init__(self, source, batch_size: int, device, shuffle: bool, seed: int | None = None):
        from torch.utils.data import DataLoader, SequentialSampler

        loader = source if isinstance(source, DataLoader) else None
        data = _WithIndex(loader.dataset if loader is not None else source)
        order = torch.Generator()
        other = torch.Generator()  # the DataLoader's own draws (worker seeds) never touch the global generator
        if seed is None:
            order.seed()
            other.seed()
        else:
            order.manual_seed(seed)
            other.manual_seed(seed + 1)
        sampler = _Permutations(len(data), order) if shuffle else SequentialSampler(data)
        self.loader = DataLoader(data, batch_size=loader.batch_size if loader is not None else batch_size,
                                 sampler=sampler, num_workers=loader.num_workers if loader is not None else 0,
                                 generator=other)
        self.device = torch.device(device)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for x, y, idx in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True), idx


def batches(source, dataset: Dataset | None, batch_size: int, device, shuffle: bool, seed: int | None = None):
    """:class:`Batches` of a jkt ``Split`` (normalised by its jkt ``dataset``), or :class:`TorchBatches` of a
    ``torch.utils.data.Dataset``/``DataLoader`` (whose items are already tensors; ``dataset`` unused)."""
    if isinstance(source, Split):
        if dataset is None:
            raise ValueError("a jkt Split needs its jkt Dataset (for normalisation); pass dataset=")
        return Batches(source, dataset, batch_size, device, shuffle, seed)
    return TorchBatches(source, batch_size, device, shuffle, seed)
