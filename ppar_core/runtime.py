"""Where code runs: devices, data-worker counts, seeds, autocast and RNG snapshots.

Everything a training run needs to be reproducible, and nothing about the model: the training engine calls
`resolve_device` and `seed_everything` once, wraps its forward in `autocast` and snapshots the RNGs into the
training state with `capture_rng_state`. Files are written through `ppar_core.files`.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor

from ppar_core.errors import PparError

_CUDA_SPEC = re.compile(r"^cuda(?::(\d+))?$")
_SEED_MAX = 2**32 - 1  # numpy's legacy seeding accepts [0, 2**32 - 1]; the other RNGs accept more


def resolve_device(spec: str = "auto") -> torch.device:
    """Turn a `--device` value into a `torch.device`.

    `auto` picks `cuda` when a GPU is visible, else `cpu`; `cpu`, `cuda` and `cuda:N` are taken literally but a GPU
    that is not there is an error (a silent fall-back to the CPU would turn a 2-hour run into a 2-week one).
    """
    text = spec.strip().lower()
    if text == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    match = _CUDA_SPEC.match(text)
    if match is None:
        raise PparError(f"Unknown device {spec!r}: use auto, cpu, cuda or cuda:N.")
    if not torch.cuda.is_available():
        raise PparError(f"Device {spec!r} was requested but no CUDA GPU is available here: pass --device cpu.")
    if match.group(1) is None:
        return torch.device("cuda")
    index = int(match.group(1))
    count = torch.cuda.device_count()
    if index >= count:
        raise PparError(f"Device {spec!r} does not exist: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}.")
    return torch.device("cuda", index)


def seed_everything(seed: int) -> None:
    """Seed python `random`, numpy's legacy global RNG, torch's CPU RNG and every CUDA RNG with `seed`."""
    if not 0 <= seed <= _SEED_MAX:
        raise PparError(f"Seed {seed} is out of range: use an integer from 0 to {_SEED_MAX}.")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device (lazily when CUDA is not initialised yet)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


@contextlib.contextmanager
def autocast(device: torch.device, *, enabled: bool = True) -> Iterator[None]:
    """Mixed precision for the forward pass: bf16 autocast on CUDA, nothing on CPU.

    The CPU path stays fp32 on purpose: these CPUs have no bf16 units and run bf16 about 3.5x slower. bf16 rather than
    fp16 on the GPU because it needs no loss scaler (same exponent range as fp32).
    """
    if enabled and device.type == "cuda":
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            yield
    else:
        yield


def capture_rng_state() -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Snapshot every RNG a training step draws from -> (tensors, meta).

    tensors: `rng.torch_cpu` (N,) uint8, `rng.cuda.<i>` (N,) uint8 per visible GPU, `rng.python` (625,) int64 (the
    Mersenne Twister words and position), `rng.numpy` (624,) int64 (the MT19937 key). meta holds the remaining
    scalars as JSON-able values. Both fit a safetensors file; `restore_rng_state` puts them back exactly.
    """
    tensors: dict[str, Tensor] = {"rng.torch_cpu": torch.get_rng_state().clone()}
    cuda_count = 0
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # Only when CUDA is already in use: querying it would otherwise initialise it in a process that never needed
        # it (and in a forked DataLoader worker that is an error).
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{index}"] = state.clone()
        cuda_count = torch.cuda.device_count()

    py_version, py_words, py_gauss_next = random.getstate()
    tensors["rng.python"] = torch.tensor(py_words, dtype=torch.int64)  # 32-bit unsigned words and the position

    np_name, np_key, np_pos, np_has_gauss, np_cached_gaussian = np.random.get_state(legacy=True)
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(np_key, dtype=np.int64).copy())

    meta: dict[str, Any] = {
        "cuda_count": cuda_count,
        "python_version": py_version,
        "python_gauss_next": py_gauss_next,  # None or a float; json round-trips floats exactly (repr)
        "numpy_name": np_name,
        "numpy_pos": int(np_pos),
        "numpy_has_gauss": int(np_has_gauss),
        "numpy_cached_gaussian": float(np_cached_gaussian),
    }
    return tensors, meta


def restore_rng_state(tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Put back a snapshot from `capture_rng_state` (tensors may come from a file, on any device).

    CUDA states are restored for the GPUs present in both the snapshot and this machine; a GPU run resumed on the CPU
    keeps its CPU, python and numpy streams exact.
    """
    try:
        torch.set_rng_state(tensors["rng.torch_cpu"].detach().to("cpu", torch.uint8))
        py_words = tuple(int(word) for word in tensors["rng.python"].tolist())
        gauss_next = meta["python_gauss_next"]
        random.setstate((int(meta["python_version"]), py_words, None if gauss_next is None else float(gauss_next)))
        np_key = tensors["rng.numpy"].detach().cpu().numpy().astype(np.uint32)
        np.random.set_state(
            (
                str(meta["numpy_name"]),
                np_key,
                int(meta["numpy_pos"]),
                int(meta["numpy_has_gauss"]),
                float(meta["numpy_cached_gaussian"]),
            )
        )
    except KeyError as exc:
        raise PparError(
            f"The saved RNG state lacks {exc.args[0]!r}: the training-state file is incomplete; resume without it."
        ) from None
    if torch.cuda.is_available():
        for index in range(min(int(meta.get("cuda_count", 0)), torch.cuda.device_count())):
            key = f"rng.cuda.{index}"
            if key in tensors:
                torch.cuda.set_rng_state(tensors[key].detach().to("cpu", torch.uint8), device=index)


MAX_WORKERS = 16


def default_workers() -> int:
    """DataLoader workers when the config leaves them unset: the cores this process may use, minus one for the
    training loop itself, at most MAX_WORKERS."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 1
    return max(0, min(MAX_WORKERS, usable - 1))


def data_workers(asked: int | None) -> int:
    """The DataLoader workers to use: `asked` (a config's or a flag's value), or `default_workers()` when unset."""
    return default_workers() if asked is None else asked


@contextlib.contextmanager
def one_opencv_thread() -> Iterator[None]:
    """OpenCV on one thread while the block runs: start DataLoader workers inside it.

    Each worker then decodes and augments on one core (OpenCV's own threads would oversubscribe the cores the
    workers share), having inherited the setting when it was forked. Setting it in the worker instead deadlocks:
    a forked child holds the parent's OpenCV thread pool without its threads, and stopping that pool waits forever.
    """
    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(previous)
