"""The training engine: every method and option trains; resume reproduces; failures keep the last good checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
from conftest import tiny_train_config
from safetensors import safe_open

from ppar_core.checkpoint import load_checkpoint, sibling_state_path
from ppar_core.config import TrainConfig, from_dict, merge
from ppar_core.engine import step as step_module
from ppar_core.engine.distributed import DistContext
from ppar_core.engine.interrupt import StopFlag
from ppar_core.engine.train import STOP_AGREE_EVERY, _should_stop, train
from ppar_core.errors import PparError

ROOT = Path(__file__).resolve().parents[1]


def _records(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _quick(root: Path, out: Path, **changes: Any) -> TrainConfig:
    """3 steps, no evaluation: for the option matrix."""
    return merge(tiny_train_config(root, out, iters=3, checkpoint_every=0, data={"targets": []}), changes)


OPTION_MATRIX = [
    {"loss": {"method": "erm"}},
    {"loss": {"align": "none"}},
    {"loss": {"align": "direct"}},
    {"loss": {"align": "progressive"}},
    {"loss": {"reweight": "none"}},
    {"loss": {"reweight": "otp", "weight_warmup": 0.0, "weight_ramp": 0.0}},
    {"loss": {"reweight": "ratio", "weight_warmup": 0.0, "weight_ramp": 0.0}},
    {"model": {"vtp": {"kind": "ema"}}},
    {"model": {"vtp": {"kind": "mix"}}},
    {"model": {"freeze_backbone": True}},
]


@pytest.mark.parametrize("changes", OPTION_MATRIX, ids=lambda c: json.dumps(c, separators=(",", ":")))
def test_three_steps_for_each_option(synth_root: Path, tmp_path: Path, changes: dict[str, Any]) -> None:
    cfg = _quick(synth_root, tmp_path / "run", **changes)
    result = train(cfg)
    assert result.step == 3 and not result.interrupted
    records = _records(tmp_path / "run")
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        assert all(torch.isfinite(torch.tensor(r[k])) for k in ("total", "seg", "pa", "vo", "mean_weight"))
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt.step == 3
    stats_pixels = float(ckpt.tensors["weight_count"].sum())
    if cfg.loss.method == "erm":
        assert all(r["pa"] == 0.0 and r["vo"] == 0.0 for r in records)
        assert all(abs(r["total"] - r["seg"]) < 1e-6 for r in records)  # plain cross-entropy only
    if cfg.loss.method == "erm" or cfg.loss.reweight == "none":
        assert stats_pixels == 0.0  # no weights were applied, none were recorded
        assert all(r["mean_weight"] == 1.0 for r in records)
    elif cfg.loss.weight_warmup == 0.0:
        assert stats_pixels > 0  # every labelled pixel of every step was recorded
        # Mean-one normalisation before clipping: the applied mean stays near 1.
        assert all(0.7 < r["mean_weight"] < 1.3 for r in records)
    if cfg.loss.align == "none" and cfg.loss.method == "ppar":
        assert all(r["pa"] == 0.0 for r in records)
    if cfg.model.vtp.kind in ("ema", "mix"):
        _memory_moved_toward_the_class_means(ckpt.tensors, synth_root, cfg)
    if cfg.model.freeze_backbone:
        _tower_unchanged(ckpt.tensors, cfg)


def _source_class_means(model: Any, synth_root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class mean of the normalised dense embeddings Z over the source images -> (means (K,D), counts (K,))."""
    from ppar_core.data import build_dataset
    from ppar_core.normalize import image_to_tensor

    dataset = build_dataset("synth-source", data_root=synth_root)
    sums = torch.zeros(model.num_classes, model.otp.shape[1])
    counts = torch.zeros(model.num_classes)
    with torch.no_grad():
        for i in range(len(dataset)):
            sample = dataset[i]
            dense = model.encoder(image_to_tensor(sample.image, device="cpu")).dense[0]
            small = torch.nn.functional.interpolate(
                torch.from_numpy(sample.label)[None, None].float(), size=dense.shape[-2:], mode="nearest"
            )[0, 0].long()
            z = torch.nn.functional.normalize(dense, dim=0).flatten(1).t()
            for k in small.unique().tolist():
                if k < model.num_classes:
                    sums[k] += z[small.flatten() == k].sum(0)
                    counts[k] += int((small == k).sum())
    return sums / counts.clamp(min=1)[:, None], counts


def _memory_moved_toward_the_class_means(tensors: dict[str, torch.Tensor], synth_root: Path, cfg: Any) -> None:
    """ema / mix: the VTP memory starts at the OTP and its rows move toward the source class means of Z."""
    from ppar_core.loading import load_segmentor

    start = torch.nn.functional.normalize(tensors["otp"].float(), dim=-1)
    memory = tensors["vtp.memory"]
    model = load_segmentor(Path(cfg.out) / "last.safetensors")[0]
    means, counts = _source_class_means(model, synth_root)
    seen = counts > 0
    assert seen.sum() >= 5
    before = torch.nn.functional.cosine_similarity(start[seen], means[seen], dim=-1)
    after = torch.nn.functional.cosine_similarity(memory[seen], means[seen], dim=-1)
    assert (after > before).all()  # every class with pixels moved toward its centroid
    assert not torch.equal(memory[seen], start[seen])


def _tower_unchanged(tensors: dict[str, torch.Tensor], cfg: Any) -> None:
    """freeze_backbone: every CLIP image-tower weight is exactly what the run started from; the head did train."""
    from ppar_core.modeling.segmentor import build_segmentor, resolve_model_config
    from ppar_core.prototypes import build_prototypes
    from ppar_core.runtime import seed_everything

    model_cfg = resolve_model_config(cfg.model)
    seed_everything(cfg.seed)  # the run's own initialisation of the random-weight tower
    with torch.random.fork_rng(devices=[]):
        protos = build_prototypes(model_cfg.preset, pretrained=model_cfg.pretrained, device="cpu")
    initial = build_segmentor(model_cfg, prototypes=protos).state_dict()
    tower = [name for name in initial if name.startswith("encoder.")]
    assert tower and all(torch.equal(tensors[name], initial[name]) for name in tower)
    head = [name for name in initial if name.startswith("head.") and initial[name].is_floating_point()]
    assert any(not torch.equal(tensors[name], initial[name]) for name in head)


def test_progressive_schedule_ramps_in_the_logs(synth_root: Path, tmp_path: Path) -> None:
    cfg = _quick(synth_root, tmp_path / "run", iters=8)
    train(cfg)
    records = {r["step"]: r for r in _records(tmp_path / "run")}
    # Logged after step s, the terms were computed at progress (s-1)/8; ramp over the first half of training.
    for step, r in records.items():
        progress = (step - 1) / 8
        assert r["beta"] == pytest.approx(min(1.0, progress / 0.5), abs=1e-6)
        assert r["q"] == pytest.approx(0.3 + 0.7 * min(1.0, progress / 0.5), abs=1e-6)
        expected_ramp = min(1.0, max(0.0, (progress - 0.1) / 0.1))
        assert r["weight_ramp"] == pytest.approx(expected_ramp, abs=1e-6)
        if expected_ramp == 0.0:
            assert r["mean_weight"] == 1.0  # warm-up: w = 1
        assert 0.0 < r["data_wait"] <= 1.0  # in-process loading (workers 0): every step waits for its samples


def test_gradients_reach_every_trainable_parameter(synth_root: Path) -> None:
    from ppar_core.data import build_dataset
    from ppar_core.losses import ppar_loss
    from ppar_core.modeling.segmentor import build_segmentor, resolve_model_config
    from ppar_core.normalize import image_to_tensor
    from ppar_core.prototypes import build_prototypes

    for freeze in (False, True):
        cfg = tiny_train_config(synth_root, synth_root / "unused", model={"freeze_backbone": freeze})
        model_cfg = resolve_model_config(cfg.model)
        protos = build_prototypes(model_cfg.preset, pretrained=model_cfg.pretrained, device="cpu")
        model = build_segmentor(model_cfg, prototypes=protos)
        if freeze:
            model.encoder.requires_grad_(False)
        sample = build_dataset("synth-source", data_root=synth_root)[0]
        images = image_to_tensor(sample.image, device="cpu")
        labels = torch.from_numpy(sample.label.astype("int64"))[None]
        model.train()
        out = model(images)
        logits = torch.nn.functional.interpolate(out.logits, size=labels.shape[-2:], mode="bilinear")
        terms = ppar_loss(logits, labels, out.dense, model.otp, out.vtp, cfg=cfg.loss, progress=0.3)
        terms.total.backward()
        for name, p in model.named_parameters():
            if p.requires_grad:
                assert p.grad is not None and p.grad.abs().sum() > 0, name
            else:
                assert name.startswith("encoder.") and p.grad is None, name
        assert any(not p.requires_grad for p in model.parameters()) == freeze
        assert model.otp.grad is None and not model.otp.requires_grad  # the OTP is a fixed buffer


def _final_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).tensors


def test_resume_after_ctrl_c_equals_uninterrupted(synth_root: Path, tmp_path: Path) -> None:
    full = tiny_train_config(synth_root, tmp_path / "full", iters=6, data={"targets": []})
    train(full)

    part = merge(full, {"out": str(tmp_path / "part")})

    def press_ctrl_c(record: dict[str, Any]) -> None:
        if record.get("step") == 3:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does: the loop stops at the next step boundary

    first = train(part, on_log=press_ctrl_c)
    assert first.interrupted and first.step == 3
    assert load_checkpoint(first.checkpoint).step == 3
    second = train(part, resume=True)
    assert second.step == 6 and not second.interrupted

    a, b = _final_tensors(tmp_path / "full" / "last.safetensors"), _final_tensors(second.checkpoint)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # The resumed log repeats no step and matches the uninterrupted one line for line (but timing).
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("img_per_s", "data_wait")} for r in rs]  # noqa: E731
    assert strip(_records(tmp_path / "full")) == strip(_records(tmp_path / "part"))


def test_existing_run_needs_resume_and_resume_needs_same_config(tiny_run: Any, tmp_path: Path) -> None:
    cfg = tiny_train_config(tiny_run.data_root, tiny_run.out)
    with pytest.raises(PparError, match=r"already exists: pass --resume"):
        train(cfg)
    with pytest.raises(PparError, match=r"other values for loss\.reweight"):
        train(merge(cfg, {"loss": {"reweight": "ratio"}}), resume=True)
    with pytest.raises(PparError, match=r"Nothing to resume"):
        train(tiny_train_config(tiny_run.data_root, tmp_path / "empty"), resume=True)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(
    synth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_loss = step_module.ppar_loss
    calls = {"n": 0}

    def poisoned(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        terms = real_loss(*args, **kwargs)
        if calls["n"] == 3:
            terms.total = terms.total * float("nan")
        return terms

    monkeypatch.setattr(step_module, "ppar_loss", poisoned)
    cfg = tiny_train_config(synth_root, tmp_path / "run", iters=5, checkpoint_every=2, data={"targets": []})
    with pytest.raises(PparError, match=r"loss became nan at step 3.*last good checkpoint is .*last\.safetensors"):
        train(cfg)
    assert load_checkpoint(tmp_path / "run" / "last.safetensors").step == 2


def test_wrong_source_root_fails_before_building_the_model(tmp_path: Path) -> None:
    cfg = tiny_train_config(tmp_path / "nowhere", tmp_path / "run")
    with pytest.raises(PparError, match=r"nowhere"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def _cli_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_sigkill_during_training_leaves_a_resumable_run(synth_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "ppar_cli",
        "train",
        "--preset",
        "synth-tiny",
        "--data-root",
        str(synth_root),
        "--targets",
        "",
        "--iters",
        "400",
        "--batch-size",
        "2",
        "--checkpoint-every",
        "1",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--set",
        "data.augment.crop_size=[64,128]",
    ]
    proc = subprocess.Popen(args, env=_cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (out / "last.state.safetensors").exists():
            time.sleep(0.2)
        assert (out / "last.state.safetensors").exists(), proc.stderr.read().decode() if proc.poll() else "no ckpt"
        time.sleep(1.5)  # checkpoints are written every step: the kill lands at a random point of the cycle
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    model = load_checkpoint(out / "last.safetensors")
    assert model.step >= 1
    # Either both files are at the same step, or the model is one save ahead (killed between the two writes):
    # then resume says so. Both are loadable, and in the first case the run continues.
    with safe_open(str(sibling_state_path(out / "last.safetensors")), framework="pt") as fh:
        state_step = int(fh.metadata()["step"])
    cfg = from_dict(TrainConfig, json.loads((out / "config.json").read_text()))
    if state_step == model.step:
        result = train(cfg, resume=True, on_log=lambda r: os.kill(os.getpid(), signal.SIGINT))
        assert result.interrupted and result.step == model.step + 1
    else:
        with pytest.raises(PparError, match=r"disagree"):
            train(cfg, resume=True)


def _stop_agreement(rank: int, port: int, results: Any) -> None:
    """One gloo rank of the stop test: rank 1 alone is asked to stop before step 3; both count their collectives."""
    torch_dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    calls = 0
    reduce = DistContext.all_reduce_sum

    def counted(self: DistContext, t: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        return reduce(self, t)

    DistContext.all_reduce_sum = counted  # type: ignore[method-assign]
    context = DistContext(rank=rank, world_size=2, local_rank=rank, device=torch.device("cpu"), enabled=True)
    flag = StopFlag()
    stopped_at = None
    for step in range(1, 4 * STOP_AGREE_EVERY):
        flag.requested = rank == 1 and step >= 3
        if _should_stop(flag, context, step):
            stopped_at = step
            break
    results[rank] = (stopped_at, calls)
    torch_dist.destroy_process_group()


def test_ddp_ranks_agree_on_a_stop_at_the_same_step_with_one_collective_per_interval() -> None:
    # Rank 1 is asked to stop before step 3; rank 0 never is. Both stop before step STOP_AGREE_EVERY (the next
    # agreement), and neither made a collective on any other step: the steps between wait for nothing.
    results = mp.Manager().dict()
    mp.spawn(_stop_agreement, args=(29533, results), nprocs=2, join=True)
    assert dict(results) == {0: (STOP_AGREE_EVERY, 1), 1: (STOP_AGREE_EVERY, 1)}


@pytest.mark.slow
def test_ddp_two_gloo_processes_train_one_checkpoint(synth_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    args = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        "29531",
        "-m",
        "ppar_cli",
        "train",
        "--preset",
        "synth-tiny",
        "--data-root",
        str(synth_root),
        "--targets",
        "synth-real",
        "--iters",
        "3",
        "--batch-size",
        "2",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--log-every",
        "1",
        "--set",
        "data.augment.crop_size=[64,128]",
        "--set",
        "data.eval_max_images=3",
    ]
    proc = subprocess.run(args, env=_cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == [
        "config.json",
        "eval.json",
        "eval_per_class.csv",
        "last.safetensors",
        "last.state.safetensors",
        "metrics.jsonl",
        "prototypes.safetensors",
    ]
    assert load_checkpoint(out / "last.safetensors").step == 3
    records = _records(out)
    assert [r["step"] for r in records] == [1, 2, 3]  # rank 0 alone logs
    # Evaluation is split across the two ranks and summed: every target image counted once.
    assert json.loads((out / "eval.json").read_text())["targets"]["synth-real"]["images"] == 3


@pytest.mark.slow
def test_samples_do_not_depend_on_worker_count_and_accumulation_runs(synth_root: Path, tmp_path: Path) -> None:
    # Every sample is a function of (seed, k): loading in 2 worker processes gives the same run as in-process.
    a = train(_quick(synth_root, tmp_path / "w0", data={"workers": 0}))
    b = train(_quick(synth_root, tmp_path / "w2", data={"workers": 2}))
    ta, tb = _final_tensors(a.checkpoint), _final_tensors(b.checkpoint)
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    # Gradient accumulation: 2 micro-batches of 1 per step, every step logged once with finite terms.
    c = train(_quick(synth_root, tmp_path / "acc", batch_size=1, optim={"accum_steps": 2}))
    assert c.step == 3
    assert [r["step"] for r in _records(tmp_path / "acc")] == [1, 2, 3]


def test_two_micro_batches_of_one_equal_one_batch_of_two_for_erm(synth_root: Path, tmp_path: Path) -> None:
    # The same samples per step (sample k = step * 2 + position in both), crops with the same number of labelled
    # pixels, no batch coupling in the model: the accumulated gradient is the batch gradient, to float rounding.
    erm = {"loss": {"method": "erm"}}
    whole = train(_quick(synth_root, tmp_path / "b2", batch_size=2, **erm))
    split = train(_quick(synth_root, tmp_path / "b1x2", batch_size=1, optim={"accum_steps": 2}, **erm))
    a, b = _final_tensors(whole.checkpoint), _final_tensors(split.checkpoint)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=2e-5, rtol=1e-4, msg=name)
    la, lb = _records(tmp_path / "b2"), _records(tmp_path / "b1x2")
    assert [r["seg"] for r in la] == pytest.approx([r["seg"] for r in lb], rel=1e-4)
