"""A training step that does not log never waits for the device (at most one host-device sync is allowed).

These machines have no GPU, so nothing can be timed: the test counts, with a `TorchDispatchMode` that sees every
aten op of a step, the ops that on CUDA make the host wait for the device, because their result (a number, or the
size of their output) must be read back to the host: `.item()` / `float(t)` / `bool(t)` (`_local_scalar_dense`),
`nonzero`, boolean-mask indexing (`x[mask]` and its backward), `masked_select`, `bincount`, `unique`, ... Each counted
op is named with the ppar_core line that ran it, so a failure says where a sync came back.

Tensors made from host data inside a step (`torch.tensor(...)`, a blocking host->device copy on CUDA, which waits
for the device like a read: pytorch/pytorch#120996) are found the same way (`lift_fresh`) and count as syncs too.
Not seen here: a read of a value already on the host (`.tolist()` of a CPU tensor), so the one read of a log step
does not show on the CPU.
"""

from __future__ import annotations

import itertools
import os
import signal
import traceback
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import tiny_train_config
from torch.utils._python_dispatch import TorchDispatchMode

from ppar_core.config import TrainConfig, merge
from ppar_core.engine import step as step_module
from ppar_core.errors import PparError

# Ops whose result the host must read from the device (on CUDA), by aten name without the overload.
READS_DEVICE = frozenset(
    {
        "_local_scalar_dense",  # item(), float(t), int(t), bool(t), `if t:`
        "item",
        "is_nonzero",
        "equal",
        "allclose",
        "nonzero",
        "nonzero_numpy",
        "argwhere",
        "masked_select",
        "masked_scatter",
        "bincount",  # its output size is max(input) + 1
        "histc",
        "repeat_interleave",  # with tensor repeats: the output size is their sum
        "_unique",
        "_unique2",
        "unique_dim",
        "unique_consecutive",
        "unique_dim_consecutive",
    }
)
INDEXING = frozenset({"index", "index_put", "index_put_", "_index_put_impl_"})  # sync only with a boolean index
HOST_DATA = frozenset({"lift_fresh", "lift_fresh_copy"})  # torch.tensor(...) / as_tensor(...) of host data


def _caller() -> str:
    """The innermost ppar_core line on the stack, e.g. 'losses.py:210'."""
    for frame in reversed(traceback.extract_stack()):
        path = frame.filename.replace(os.sep, "/")
        if "/ppar_core/" in path:
            return f"{path.split('/ppar_core/')[-1]}:{frame.lineno}"
    return "outside ppar_core"


class SyncCounter(TorchDispatchMode):
    """Records every op that would synchronise (`syncs`) or copy host data to the device (`host_data`)."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs: list[str] = []
        self.host_data: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = func._schema.name.split("::")[-1]
        if name in READS_DEVICE or name.startswith("unique"):
            self.syncs.append(f"{name} at {_caller()}")
        elif name in INDEXING:
            indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
            if any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in indices):
                self.syncs.append(f"{name} with a boolean index at {_caller()}")
        elif name in HOST_DATA:
            self.host_data.append(_caller())
        return func(*args, **kwargs)


# The options the brief names, and the others that change the step's code path.
OPTIONS: dict[str, dict[str, Any]] = {
    "default": {},
    "reweight-ratio": {"loss": {"reweight": "ratio"}},
    "align-direct": {"loss": {"align": "direct"}},
    "vtp-ema": {"model": {"vtp": {"kind": "ema"}}},
    "vtp-mix": {"model": {"vtp": {"kind": "mix"}}},
    "erm": {"loss": {"method": "erm"}},
    "accum-2": {"optim": {"accum_steps": 2}},
}
# 4 of 10 steps: progress 0.4, so every term runs (beta 0.8, q 0.86, reliability weights fully ramped in).
STEP = 4
LOGGED = ["lr", "total", "seg", "pa", "vo", "mean_weight", "aligned_fraction", "beta", "q", "weight_ramp", "grad_norm"]


class _Setup:
    """A tiny model, its optimizer and a few batches, built as the training loop builds them, from one seed."""

    def __init__(self, synth_root: Path, changes: dict[str, Any], *, steps: int = 3) -> None:
        from ppar_core.data import build_dataset
        from ppar_core.engine.distributed import DistContext
        from ppar_core.engine.optim import build_optimizer
        from ppar_core.engine.sampling import StreamSampler, TrainSamples
        from ppar_core.engine.start import start_prototypes
        from ppar_core.modeling.segmentor import build_segmentor, resolve_model_config
        from ppar_core.runtime import seed_everything

        cfg = merge(tiny_train_config(synth_root, synth_root / "unused", iters=10, data={"targets": []}), changes)
        self.cfg: TrainConfig = replace(cfg, model=resolve_model_config(cfg.model)).validate()
        seed_everything(self.cfg.seed)
        self.model = build_segmentor(self.cfg.model, prototypes=start_prototypes(self.cfg, None))
        self.model.train()
        self.optimizer = build_optimizer(self.model, self.cfg.optim, backbone_lr_mult=self.cfg.model.backbone_lr_mult)
        self.dist = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), enabled=False)
        accum = self.cfg.optim.accum_steps
        source = build_dataset("synth-source", data_root=synth_root)
        loader: torch.utils.data.DataLoader = torch.utils.data.DataLoader(
            TrainSamples(source, self.cfg.data.augment, seed=0),  # type: ignore[arg-type]
            batch_size=self.cfg.batch_size,
            sampler=StreamSampler(
                batch_size=self.cfg.batch_size, accum_steps=accum, rank=0, world_size=1, start_step=0
            ),
            num_workers=0,
            generator=torch.Generator().manual_seed(0),
        )
        # Decoded up front: the data pipeline runs on the host, in worker processes, not in the device step.
        self.batches: Iterator[Any] = iter(list(itertools.islice(loader, steps * accum)))

    def step(self, step: int, *, log: bool) -> dict[str, Any]:
        record, _ = step_module.train_step(
            self.model,
            self.model,
            self.optimizer,
            self.batches,
            self.cfg,
            step,
            self.dist,
            checkpoint=Path("unused"),
            log=log,
        )
        return record


@pytest.mark.parametrize("option", OPTIONS)
def test_a_step_that_does_not_log_waits_for_the_device_at_most_once(synth_root: Path, option: str) -> None:
    setup = _Setup(synth_root, OPTIONS[option])
    with SyncCounter() as counter:
        record = setup.step(STEP, log=False)
    assert record == {}
    copies = [f"host data copied to the device at {where}" for where in counter.host_data]
    syncs = counter.syncs + copies
    assert len(syncs) <= 1, f"{len(syncs)} host-device syncs: {syncs}"


@pytest.mark.parametrize("option", ["default", "reweight-ratio", "align-direct", "vtp-ema", "accum-2"])
def test_a_log_step_logs_what_an_eager_step_would_and_logging_changes_nothing(synth_root: Path, option: str) -> None:
    from ppar_core.engine.optim import lr_at
    from ppar_core.losses import ppar_loss
    from ppar_core.normalize import normalize

    logged, silent, eager = (_Setup(synth_root, OPTIONS[option]) for _ in range(3))
    torch.manual_seed(1)
    with SyncCounter() as counter:
        record = logged.step(STEP, log=True)
    assert len(counter.syncs) <= 1, counter.syncs
    assert list(record) == LOGGED

    # The numbers, as the step computed them before it kept them on the device: floats read term by term.
    cfg, accum = eager.cfg, eager.cfg.optim.accum_steps
    expected: dict[str, float] = {"lr": lr_at(STEP, total=cfg.iters, cfg=cfg.optim)}
    torch.manual_seed(1)
    for _ in range(accum):
        pixels, labels_u8, *_ = next(eager.batches)
        labels = labels_u8.long()
        output = eager.model(normalize(pixels))
        size = labels.shape[-2:]
        logits = torch.nn.functional.interpolate(output.logits, size=size, mode="bilinear", align_corners=False)
        terms = ppar_loss(logits, labels, output.dense, eager.model.otp, output.vtp, cfg=cfg.loss, progress=0.4)
        (terms.total / accum).backward()
        for key, value in terms.as_floats().items():
            expected[key] = expected.get(key, 0.0) + value / accum
    params = [p for p in eager.model.parameters() if p.grad is not None]
    expected["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip or float("inf")))
    assert record == pytest.approx(expected, rel=1e-6, abs=1e-7)

    # A step that logs and one that does not change the model alike, to the last bit (same draws for both).
    torch.manual_seed(1)
    silent.step(STEP, log=False)
    for seed in (2, 3):
        torch.manual_seed(seed)
        logged.step(STEP + 1, log=False)
        torch.manual_seed(seed)
        silent.step(STEP + 1, log=True)
    a, b = logged.model.state_dict(), silent.model.state_dict()
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_the_loss_the_statistics_and_the_vtp_memory_never_wait_for_the_device() -> None:
    from ppar_core.losses import LossConfig, ppar_loss
    from ppar_core.modeling.vtp import VisualTextPrototypes, VTPConfig
    from ppar_core.reliability import WeightStats

    g = torch.Generator().manual_seed(0)
    k, d = 5, 8
    labels = torch.randint(0, k, (2, 16, 16), generator=g)
    labels[:, :3] = 255
    otp = torch.randn(k, d, generator=g)
    configs = [LossConfig(method="erm"), LossConfig(align="none"), LossConfig(align="direct"), LossConfig()]
    configs += [LossConfig(reweight="ratio"), LossConfig(reweight="none")]
    for cfg in configs:
        for progress in (0.0, 0.15, 0.4, 1.0):
            logits = torch.randn(2, k, 16, 16, generator=g, requires_grad=True)
            dense = torch.randn(2, d, 8, 8, generator=g, requires_grad=True)
            vtp = torch.randn(2, k, d, generator=g, requires_grad=True)
            with SyncCounter() as counter:
                terms = ppar_loss(logits, labels, dense, otp, vtp, cfg=cfg, progress=progress)
                terms.total.backward()
                terms.stacked()
                stats = WeightStats.zeros(k)
                stats.update(torch.rand(2, 16, 16, generator=g), labels, w_max=3.0)
            assert counter.syncs == [], (cfg, progress, counter.syncs)
            assert counter.host_data == [], (cfg, progress, counter.host_data)
    for kind in ("ema", "mix"):
        memory = VisualTextPrototypes(otp, VTPConfig(kind=kind))
        small = torch.nn.functional.interpolate(labels[:, None].float(), size=(8, 8), mode="nearest")[:, 0].long()
        with SyncCounter() as counter:
            memory.update(torch.randn(2, d, 8, 8, generator=g), small, check_labels=False)
        assert counter.syncs == [] and counter.host_data == [], (kind, counter.syncs, counter.host_data)


def _poison(monkeypatch: pytest.MonkeyPatch, *, at_call: int, then: Any = None) -> None:
    """Make the loss NaN at its `at_call`-th call (1-based: the step of that number, one micro-batch a step)."""
    real_loss = step_module.ppar_loss
    calls = {"n": 0}

    def poisoned(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        terms = real_loss(*args, **kwargs)
        if calls["n"] == at_call:
            terms.total = terms.total * float("nan")
            if then is not None:
                then()
        return terms

    monkeypatch.setattr(step_module, "ppar_loss", poisoned)


def test_a_non_finite_loss_on_a_step_that_does_not_log_stops_training_before_the_next_checkpoint(
    synth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ppar_core.checkpoint import load_checkpoint
    from ppar_core.engine.train import train

    # Logged steps: 1 (the first) and 6 (the last); checkpoints after steps 2 and 4; the loss is NaN at step 3.
    _poison(monkeypatch, at_call=3)
    cfg = tiny_train_config(
        synth_root, tmp_path / "run", iters=6, log_every=10, checkpoint_every=2, data={"targets": []}
    )
    with pytest.raises(PparError, match=r"loss became nan at step 3.*last good checkpoint is .*last\.safetensors"):
        train(cfg)
    assert load_checkpoint(tmp_path / "run" / "last.safetensors").step == 2


def test_ctrl_c_after_an_unread_non_finite_step_writes_no_checkpoint(
    synth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ppar_core.engine.train import train

    # Step 2 does not log and no checkpoint follows it; Ctrl-C during it makes the loop save at once.
    _poison(monkeypatch, at_call=2, then=lambda: os.kill(os.getpid(), signal.SIGINT))
    cfg = tiny_train_config(
        synth_root, tmp_path / "run", iters=6, log_every=10, checkpoint_every=0, data={"targets": []}
    )
    with pytest.raises(PparError, match=r"loss became nan at step 2.*no checkpoint was written yet"):
        train(cfg)
    assert not (tmp_path / "run" / "last.safetensors").exists()
