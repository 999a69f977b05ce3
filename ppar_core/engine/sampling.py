"""Deterministic, resumable training samples.

Every training image a run sees is a pure function of (seed, k), where k counts samples from the start of training
across all processes: the k-th sample is image `perm_e[k mod N]` of the permutation drawn for epoch e = k // N, and
its augmentation draws from `numpy.random.default_rng([seed, k])`. So a run resumed at step s reads exactly the
samples the uninterrupted run would have read, whatever the number of DataLoader workers.

Sample k for (step, micro-batch a, rank r, position j) is
`k = ((step * accum + a) * world_size + r) * batch_size + j`.

A bad sample (unreadable, inconsistent) is the training sampler's business alone (datasets are pure): with
`skip_bad` it is replaced by the next good image in dataset order, the same one every time for the same k, so resume
stays exact, and its name travels with the batch so that the run can count and report it.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from ppar_core.data import Sample, SegDataset
from ppar_core.data.transforms import TrainAugment, apply_train_augment
from ppar_core.errors import PparError

# Names of the bad samples a training sample stands in for, joined by this (file names hold no newline).
BAD_SEPARATOR = "\n"


def epoch_permutation(num_items: int, *, seed: int, epoch: int) -> np.ndarray:
    """The order of the dataset in epoch `epoch` (int64 (N,))."""
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(num_items)


class TrainSamples:
    """Map-style view of the infinite sample stream: `samples[k]` -> (image (3,h,w) uint8 RGB, label (h,w) uint8
    trainIds, names of the bad samples it replaced joined by BAD_SEPARATOR, "" when none).

    Images stay uint8 until the training step normalises them on the device (`ppar_core.normalize`).
    """

    def __init__(self, dataset: SegDataset, augment: TrainAugment, *, seed: int, skip_bad: bool = False) -> None:
        self.dataset = dataset
        self.augment = augment
        self.seed = seed
        self.skip_bad = skip_bad
        self._perm_cache: tuple[int, np.ndarray] | None = None
        self._bad: set[int] = set()  # known-bad indices of this process, skipped without a second read

    def dataset_index(self, k: int) -> int:
        n = len(self.dataset)
        epoch = k // n
        if self._perm_cache is None or self._perm_cache[0] != epoch:
            self._perm_cache = (epoch, epoch_permutation(n, seed=self.seed, epoch=epoch))
        return int(self._perm_cache[1][k % n])

    def _load(self, index: int) -> tuple[Sample, list[str]]:
        """The sample at `index`, or with skip_bad the next good one in dataset order, and the bad names passed."""
        if not self.skip_bad:
            return self.dataset.load(index), []
        n = len(self.dataset)
        passed: list[str] = []
        for step in range(n):
            i = (index + step) % n
            if i not in self._bad:
                try:
                    return self.dataset.load(i), passed
                except PparError:
                    self._bad.add(i)
            passed.append(self.dataset.sample_name(i))
        raise PparError(f"Every one of the {n} samples of {self.dataset.name} under {self.dataset.root} is bad.")

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        sample, passed = self._load(self.dataset_index(k))
        rng = np.random.default_rng([self.seed, k])
        image, label = apply_train_augment(sample.image, sample.label, self.augment, rng)
        chw = np.ascontiguousarray(image.transpose(2, 0, 1))
        return torch.from_numpy(chw), torch.from_numpy(label), BAD_SEPARATOR.join(passed)


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
