"""Deterministic, resumable training samples.

Every training image a run sees is a pure function of (seed, k), where k counts samples from the start of training
across all processes: the k-th sample is image `perm_e[k mod N]` of the permutation drawn for epoch e = k // N, and
its augmentation draws from `numpy.random.default_rng([seed, k])`. So a run resumed at step s reads exactly the
samples the uninterrupted run would have read, whatever the number of DataLoader workers.

Sample k for (step, micro-batch a, rank r, position j) is
`k = ((step * accum + a) * world_size + r) * batch_size + j`.

Several sources train as one stream, by a rule (`data.source_sampling`): `proportional` treats them as one dataset
of all their images (each source in proportion to its size); `balanced` (the usual choice) lets the sources take
turns, sample k coming from source k mod S, each source in its own shuffled order, so every source has the same
share of every batch. Both are pure functions of (seed, k), like one source.

A bad sample (unreadable, inconsistent) is the training sampler's business alone (datasets are pure): with
`skip_bad` it is replaced by the next good image in dataset order, the same one every time for the same k, so resume
stays exact, and its name travels with the batch so that the run can count and report it.

Each sample also carries the index of its source, so that the loss knows which classes its labels can hold
(`ppar_core.data.registry.source_class_table`: SYNTHIA labels 16 of the 19 classes; in a mix with GTA5, its pixels
must not push the other three down).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

import numpy as np
import torch
from torch.utils.data import Sampler

from ppar_core.config import SAMPLING_RULES
from ppar_core.data import Sample, SegDataset
from ppar_core.data.transforms import NO_PHOTOMETRIC, TrainAugment, apply_train_augment, draw_photometric
from ppar_core.errors import PparError

# Names of the bad samples a training sample stands in for, joined by this (file names hold no newline).
BAD_SEPARATOR = "\n"


def epoch_permutation(num_items: int, *, seed: int, epoch: int, stream: int = 0) -> np.ndarray:
    """The order of a dataset in epoch `epoch` (int64 (N,)); `stream` tells the sources of a balanced mix apart."""
    key = [seed, epoch, 0x5EED] if stream == 0 else [seed, epoch, 0x5EED, stream]
    return np.random.default_rng(key).permutation(num_items)


class TrainSamples:
    """Map-style view of the infinite sample stream: `samples[k]` -> (image (3,h,w) uint8 RGB, label (h,w) uint8
    trainIds, names of the bad samples it replaced joined by BAD_SEPARATOR ("" when none), source index (int),
    photometric parameters (5,) float32 for the device to apply (all NaN unless `augment.photometric_on` is
    "device")).

    `dataset` is one dataset or several (the sources of a mix, `sampling` one of SAMPLING_RULES). Images stay uint8
    until the training step normalises them on the device (`ppar_core.normalize`).
    """

    def __init__(
        self,
        dataset: SegDataset | Sequence[SegDataset],
        augment: TrainAugment,
        *,
        seed: int,
        skip_bad: bool = False,
        sampling: str = "balanced",
    ) -> None:
        self.sources = [dataset] if isinstance(dataset, SegDataset) else list(dataset)
        if sampling not in SAMPLING_RULES:
            raise PparError(f"Unknown source sampling {sampling!r}: use one of {', '.join(SAMPLING_RULES)}.")
        self.augment = augment
        self.seed = seed
        self.skip_bad = skip_bad
        self.sampling = sampling
        # proportional: the sources as one dataset, an index into their concatenation
        self._starts = np.cumsum([0] + [len(s) for s in self.sources])
        self._perm_cache: dict[int, tuple[int, np.ndarray]] = {}  # stream -> (epoch, permutation)
        self._bad: set[tuple[int, int]] = set()  # known-bad (source, index) of this process, skipped without a read

    def _order(self, position: int, size: int, stream: int) -> int:
        epoch = position // size
        cached = self._perm_cache.get(stream)
        if cached is None or cached[0] != epoch:
            cached = (epoch, epoch_permutation(size, seed=self.seed, epoch=epoch, stream=stream))
            self._perm_cache[stream] = cached
        return int(cached[1][position % size])

    def source_index(self, k: int) -> tuple[int, int]:
        """Which source sample k comes from, and its index there."""
        if len(self.sources) > 1 and self.sampling == "balanced":
            source = k % len(self.sources)
            return source, self._order(k // len(self.sources), len(self.sources[source]), source + 1)
        flat = self._order(k, int(self._starts[-1]), 0)
        source = int(np.searchsorted(self._starts, flat, side="right") - 1)
        return source, flat - int(self._starts[source])

    def dataset_index(self, k: int) -> int:
        """The index of sample k in its source (one source: in the dataset)."""
        return self.source_index(k)[1]

    def _load(self, source: int, index: int) -> tuple[Sample, list[str]]:
        """The sample at `index`, or with skip_bad the next good one in dataset order, and the bad names passed."""
        dataset = self.sources[source]
        if not self.skip_bad:
            return dataset.load(index), []
        n = len(dataset)
        passed: list[str] = []
        for step in range(n):
            i = (index + step) % n
            if (source, i) not in self._bad:
                try:
                    return dataset.load(i), passed
                except PparError:
                    self._bad.add((source, i))
            passed.append(dataset.sample_name(i))
        raise PparError(f"Every one of the {n} samples of {dataset.name} under {dataset.root} is bad.")

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor, str, int, torch.Tensor]:
        source, index = self.source_index(k)
        sample, passed = self._load(source, index)
        rng = np.random.default_rng([self.seed, k])
        image, label = apply_train_augment(sample.image, sample.label, self.augment, rng)
        # The photometric step is the augment's last draw, so the device gets the parameters the CPU would use.
        photometric = draw_photometric(rng) if self.augment.photometric_by_device else NO_PHOTOMETRIC
        chw = np.ascontiguousarray(image.transpose(2, 0, 1))
        return (
            torch.from_numpy(chw), torch.from_numpy(label), BAD_SEPARATOR.join(passed), source,
            torch.from_numpy(photometric.copy()),
        )  # fmt: skip


T = TypeVar("T")


class WaitClock(Generic[T]):
    """An iterator that adds up the seconds its consumer spends waiting in `next()`: training's data wait.

    `take()` returns the seconds waited since the last call and starts again from zero. Wrapped around the loader,
    the share of a log window's wall time spent here says whether the data pipeline keeps up with the model.
    """

    def __init__(self, items: Iterator[T]) -> None:
        self.items = items
        self.waited = 0.0

    def __iter__(self) -> WaitClock[T]:
        return self

    def __next__(self) -> T:
        start = time.perf_counter()
        try:
            return next(self.items)
        finally:
            self.waited += time.perf_counter() - start

    def take(self) -> float:
        waited, self.waited = self.waited, 0.0
        return waited


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
