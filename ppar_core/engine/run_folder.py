"""A training run's folder: what is in it and how each file is written.

<out>/config.json              the resolved config (written once, when the run starts)
<out>/last.safetensors         the model checkpoint (+ `last.state.safetensors`, the state to resume exactly)
<out>/prototypes.safetensors   the prototypes built at start, when no prototypes file was given
<out>/metrics.jsonl            one JSON record per logged step and per evaluation
<out>/eval.json                the run's final evaluation report (+ eval_per_class.csv); never replaced by
                               a later `ppar eval`, which writes reports of its own name
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ppar_core.checkpoint import CHECKPOINT_FILE, save_checkpoint, save_training_state, sibling_state_path
from ppar_core.config import TrainConfig, from_dict, to_dict
from ppar_core.errors import PparError
from ppar_core.evaluation.report import REPORT_FILE
from ppar_core.files import atomic_write
from ppar_core.runtime import capture_rng_state

MODEL_FILE = CHECKPOINT_FILE
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
PROTOTYPES_FILE = "prototypes.safetensors"
LOCK_FILE = ".ppar.lock"


def lock_holder(out: str | Path) -> int | None:
    """The pid of the live process that holds the run folder `out`, or None (no lock, or a stale one: its process
    is gone, e.g. after kill -9). A lock taken on another host is taken as held (its pid cannot be checked here)."""
    try:
        info = json.loads((Path(out) / LOCK_FILE).read_text(encoding="utf-8"))
        pid = int(info["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if info.get("host") != socket.gethostname():
        return pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, owned by another user
        return pid
    return pid


class RunFolder:
    """Paths and writers of one run folder (see the module docstring)."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self.model = self.out / MODEL_FILE
        self.state = sibling_state_path(self.model)
        self.config = self.out / CONFIG_FILE
        self.metrics = self.out / METRICS_FILE
        self.prototypes = self.out / PROTOTYPES_FILE
        self.report = self.out / REPORT_FILE

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the folder for this process while the block runs; PparError if a live process holds it already.

        The lock file is created with O_EXCL (two processes cannot both take it); a stale lock (its process is gone)
        is replaced. It is removed when the block ends, however it ends, and so is the folder if this call made it
        and nothing else was written into it (a run that failed its checks leaves no empty folder behind).
        """
        created = not self.out.exists()
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / LOCK_FILE
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})
        for _ in range(2):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = lock_holder(self.out)
                if holder is not None and holder != os.getpid():
                    raise PparError(
                        f"{self.out} is in use by pid {holder} (a training run writes it): wait for it to finish, "
                        "stop it, or choose another --out."
                    ) from None
                path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(record)
            break
        try:
            yield
        finally:
            path.unlink(missing_ok=True)
            if created and not any(self.out.iterdir()):
                self.out.rmdir()

    def read_config(self) -> TrainConfig:
        """The config the run was started with (its config.json)."""
        if not self.config.is_file():
            raise PparError(f"{self.out} holds no {CONFIG_FILE}: it is not a ppar run folder (or was never started).")
        try:
            return from_dict(TrainConfig, json.loads(self.config.read_text(encoding="utf-8")))
        except (ValueError, PparError) as exc:
            raise PparError(f"{self.config} cannot be read as a run config ({exc}).") from None

    def write_config(self, cfg: TrainConfig) -> None:
        text = json.dumps(to_dict(cfg), indent=2) + "\n"
        atomic_write(self.config, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    def append_metrics(self, record: dict[str, Any]) -> None:
        with self.metrics.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    def truncate_metrics(self, *, after_step: int) -> None:
        """On resume, drop the records of steps the resumed run will repeat."""
        if not self.metrics.exists():
            return
        lines = self.metrics.read_text(encoding="utf-8").splitlines()
        keep = [line for line in lines if line and json.loads(line).get("step", 0) <= after_step]
        text = "".join(line + "\n" for line in keep)
        atomic_write(self.metrics, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    def save(
        self, cfg: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer, step: int, extra: dict[str, Any]
    ) -> None:
        """The checkpoint pair: model first, then state. A crash between the two leaves a model newer than its
        state, which resume detects (their steps differ)."""
        save_checkpoint(self.model, tensors=model.state_dict(), config=to_dict(cfg), step=step, extra=extra)
        rng_tensors, rng_meta = capture_rng_state()
        save_training_state(
            self.state, step=step, optimizer=optimizer, extra_tensors=rng_tensors, meta={"rng": rng_meta}
        )
