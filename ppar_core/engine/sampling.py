"""Deterministic, resumable training samples.

Every training image a run sees is a pure function of (seed, k), where k counts samples from the start of training
across all processes: the k-th sample is image `perm_e[k mod N]` of the permutation drawn for epoch e = k // N, and
its augmentation draws from `numpy.random.default_rng([seed, k])`. So a run resumed at step s reads exactly the
samples the uninterrupted run would have read, whatever the number of DataLoader workers.

Sample k for (step, micro-batch a, rank r, position j) is
`k = ((step * accum + a) * world_size + r) * batch_size + j`.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from ppar_core.data import SegDataset
from ppar_core.data.transforms import TrainAugment, apply_train_augment, to_clip_tensor_layout


def epoch_permutation(num_items: int, *, seed: int, epoch: int) -> np.ndarray:
    """The order of the dataset in epoch `epoch` (int64 (N,))."""
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(num_items)


class TrainSamples:
    """Map-style view of the infinite sample stream: `samples[k]` -> (image (3,h,w) float32, label (h,w) int64)."""

    def __init__(self, dataset: SegDataset, augment: TrainAugment, *, seed: int) -> None:
        self.dataset = dataset
        self.augment = augment
        self.seed = seed
        self._perm_cache: tuple[int, np.ndarray] | None = None

    def dataset_index(self, k: int) -> int:
        n = len(self.dataset)
        epoch = k // n
        if self._perm_cache is None or self._perm_cache[0] != epoch:
            self._perm_cache = (epoch, epoch_permutation(n, seed=self.seed, epoch=epoch))
        return int(self._perm_cache[1][k % n])

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self.dataset[self.dataset_index(k)]
        rng = np.random.default_rng([self.seed, k])
        image, label = apply_train_augment(sample.image, sample.label, self.augment, rng)
        return torch.from_numpy(to_clip_tensor_layout(image)), torch.from_numpy(label.astype(np.int64))


class StreamSampler(Sampler[int]):
    """Yields the sample counters k of this process, from optimizer step `start_step` on, forever."""

    def __init__(self, *, batch_size: int, accum_steps: int, rank: int, world_size: int, start_step: int) -> None:
        self.batch_size = batch_size
        self.accum_steps = accum_steps
        self.rank = rank
        self.world_size = world_size
        self.start_step = start_step

    def __iter__(self) -> Iterator[int]:
        micro = self.start_step * self.accum_steps
        while True:
            base = (micro * self.world_size + self.rank) * self.batch_size
            yield from range(base, base + self.batch_size)
            micro += 1
