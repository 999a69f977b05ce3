"""checkpoint: round trips, clear errors for bad files, strict module loading, exact optimizer resume, crash safety."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

from ppar_core.checkpoint import (
    CHECKPOINT_FORMAT_VERSION,
    load_checkpoint,
    load_into_module,
    load_training_state,
    save_checkpoint,
    save_training_state,
    sibling_state_path,
)
from ppar_core.errors import PparError
from ppar_core.files import file_sha256
from ppar_core.runtime import capture_rng_state, restore_rng_state

REPO_ROOT = Path(__file__).resolve().parents[1]


def _assert_same(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(actual) == sorted(expected)
    for name, tensor in expected.items():
        assert actual[name].dtype == tensor.dtype, name
        assert torch.equal(actual[name], tensor.detach().cpu()), name


# ------------------------------------------------------------------------------------------------------ round trips


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    base = torch.randn(4, 6)
    tensors = {
        "w": base,
        "tied": base,  # shares storage with w (tied weights): must be saved anyway
        "row": base[1],  # a view into the same storage
        "t": base.t(),  # non-contiguous
        "bf16": torch.randn(3, 2).to(torch.bfloat16),
        "ids": torch.arange(5, dtype=torch.int64),
        "mask": torch.tensor([1, 0, 255], dtype=torch.uint8),
        "scale": torch.tensor(14.25),  # 0-dim
        "empty": torch.zeros(0, 3),
        "param": nn.Parameter(torch.ones(2)),  # requires grad: saved detached
    }
    config = {"model": {"preset": "tiny", "width": 64}, "optim": {"lr": 1e-4}, "targets": ["cityscapes", "bdd100k"]}
    extra = {"histograms": [[0, 1, 2], [3, 4, 5]], "note": "ok", "best_miou": 0.4375}
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, tensors=tensors, config=config, step=1234, extra=extra)

    ckpt = load_checkpoint(path)
    assert ckpt.path == path
    _assert_same(ckpt.tensors, tensors)
    assert ckpt.config == config
    assert ckpt.step == 1234
    assert ckpt.meta["format_version"] == CHECKPOINT_FORMAT_VERSION
    assert ckpt.meta["kind"] == "model"
    assert isinstance(ckpt.meta["ppar_version"], str)
    for key, value in extra.items():
        assert ckpt.meta[key] == value


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_checkpoint_loads_onto_cuda(tmp_path: Path) -> None:
    path = tmp_path / "gpu.safetensors"
    weights = torch.randn(3, 3, device="cuda")
    save_checkpoint(path, tensors={"w": weights, "h": weights.half()}, config={}, step=1)
    ckpt = load_checkpoint(path, map_location="cuda")
    assert ckpt.tensors["w"].device.type == "cuda" and torch.equal(ckpt.tensors["w"], weights)
    assert torch.equal(load_checkpoint(path).tensors["h"], weights.half().cpu())


def test_metadata_is_readable_by_plain_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, tensors={"a": torch.ones(1)}, config={"x": 1}, step=5)
    with safetensors.safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["format_version"] == "1" and metadata["kind"] == "model" and metadata["step"] == "5"
    assert json.loads(metadata["config"]) == {"x": 1}


def test_extra_may_not_override_reserved_fields(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="step"):
        save_checkpoint(tmp_path / "x.safetensors", tensors={}, config={}, step=1, extra={"step": 2})


def test_sibling_state_path() -> None:
    assert sibling_state_path(Path("runs/a/last.safetensors")) == Path("runs/a/last.state.safetensors")
    assert sibling_state_path(Path("best.safetensors")) == Path("best.state.safetensors")
    assert sibling_state_path(Path("runs/model")) == Path("runs/model.state.safetensors")


# ---------------------------------------------------------------------------------------------------------- errors


@pytest.fixture
def good_file(tmp_path: Path) -> Path:
    path = tmp_path / "good.safetensors"
    save_checkpoint(path, tensors={"w": torch.randn(64, 64)}, config={"a": 1}, step=3)
    return path


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.safetensors"
    with pytest.raises(PparError, match=r"nope\.safetensors does not exist"):
        load_checkpoint(path)
    with pytest.raises(PparError, match="is a folder"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("keep", [0.5, 0.999, 7 / 16384])
def test_truncated_file(good_file: Path, keep: float) -> None:
    data = good_file.read_bytes()
    cut = good_file.with_name("cut.safetensors")
    cut.write_bytes(data[: max(1, int(len(data) * keep))])
    with pytest.raises(PparError, match=r"cut\.safetensors is not a readable safetensors file.*truncated") as info:
        load_checkpoint(cut)
    assert "\n" not in str(info.value)


def test_loading_onto_a_missing_gpu(good_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(PparError, match=r"good\.safetensors cannot be loaded onto cuda.*--device cpu"):
        load_checkpoint(good_file, map_location="cuda")


def test_garbage_file(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    path.write_bytes(b"PK\x03\x04 this is a zip, not safetensors" * 20)
    with pytest.raises(PparError, match=r"weights\.pt is not a readable safetensors file"):
        load_checkpoint(path)


def test_wrong_kind_both_ways(tmp_path: Path, good_file: Path) -> None:
    model = nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    state = tmp_path / "good.state.safetensors"
    save_training_state(state, step=1, optimizer=opt, extra_tensors={}, meta={})
    with pytest.raises(PparError, match=r"good\.state\.safetensors is a 'train_state' file.*model checkpoint beside"):
        load_checkpoint(state)
    with pytest.raises(PparError, match=r"good\.safetensors is a 'model' file.*training-state file"):
        load_training_state(good_file, opt)


def test_future_format_version(tmp_path: Path) -> None:
    path = tmp_path / "future.safetensors"
    metadata = {"format_version": str(CHECKPOINT_FORMAT_VERSION + 1), "kind": "model", "config": "{}", "step": "0"}
    safetensors.torch.save_file({"w": torch.ones(1)}, str(path), metadata=metadata)
    with pytest.raises(PparError, match=r"future\.safetensors has format version '2'.*upgrade ppar"):
        load_checkpoint(path)


def test_unknown_format_version(tmp_path: Path) -> None:
    path = tmp_path / "odd.safetensors"
    safetensors.torch.save_file({"w": torch.ones(1)}, str(path), metadata={"format_version": "v1", "kind": "model"})
    with pytest.raises(PparError, match=r"odd\.safetensors has an unknown format version 'v1'"):
        load_checkpoint(path)


def test_safetensors_without_ppar_metadata(tmp_path: Path) -> None:
    path = tmp_path / "bare.safetensors"
    safetensors.torch.save_file({"w": torch.ones(1)}, str(path))
    with pytest.raises(PparError, match=r"bare\.safetensors is a safetensors file but not a ppar checkpoint"):
        load_checkpoint(path)


# ------------------------------------------------------------------------------------------------ load_into_module


def _net() -> nn.Sequential:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def test_load_into_module_copies_and_casts(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src, dst = _net(), _net()
    src.eval(), dst.eval()
    src[1].running_mean.add_(1.5)  # a buffer must travel too
    path = tmp_path / "net.safetensors"
    save_checkpoint(path, tensors={k: v.double() for k, v in src.state_dict().items()}, config={}, step=0)
    load_into_module(dst, load_checkpoint(path).tensors, source=str(path))
    assert dst[0].weight.dtype == torch.float32  # cast to the module's dtype
    x = torch.randn(5, 3)
    assert torch.equal(dst(x), src(x))


def test_load_into_module_reports_every_problem_by_name() -> None:
    model = _net()
    tensors = dict(model.state_dict())
    del tensors["2.bias"]
    tensors["3.weight"] = torch.zeros(1)
    tensors["0.weight"] = torch.zeros(5, 3)
    before = model[0].weight.detach().clone()
    with pytest.raises(PparError) as info:
        load_into_module(model, tensors, source="runs/x/last.safetensors")
    message = str(info.value)
    assert message.startswith("runs/x/last.safetensors does not match the model")
    assert "1 missing (2.bias)" in message
    assert "1 unexpected (3.weight)" in message
    assert "0.weight (5, 3) vs (4, 3)" in message
    assert torch.equal(model[0].weight, before)  # nothing copied when anything is wrong


def test_load_into_module_shows_a_few_names_and_a_count() -> None:
    model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(5)])  # 10 tensors
    with pytest.raises(
        PparError, match=r"10 missing \(0\.weight, 0\.bias, 1\.weight, 1\.bias, 2\.weight, and 5 more\)"
    ):
        load_into_module(model, {}, source="f")


def test_load_into_module_non_strict_allows_missing_but_not_shapes() -> None:
    model = _net()
    new_weight = torch.full((4, 3), 0.5)
    load_into_module(model, {"0.weight": new_weight, "head.extra": torch.ones(1)}, source="f", strict=False)
    assert torch.equal(model[0].weight, new_weight)
    with pytest.raises(PparError, match="0.weight"):
        load_into_module(model, {"0.weight": torch.ones(2, 2)}, source="f", strict=False)


# ---------------------------------------------------------------------------------------------- training resume


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Dropout(0.3), nn.Linear(16, 16))
        self.head = nn.Linear(16, 3)


def _make(seed: int) -> tuple[_Tiny, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = _Tiny()
    # Two groups with different settings, so group order and per-group hyper-parameters must survive the file.
    optimizer = torch.optim.AdamW(
        [
            {"params": model.body.parameters(), "lr": 3e-3, "weight_decay": 0.05},
            {"params": model.head.parameters(), "lr": 1e-2, "betas": (0.8, 0.99)},
        ],
        eps=1e-7,
    )
    return model, optimizer


def _train_steps(model: _Tiny, optimizer: torch.optim.Optimizer, steps: int) -> None:
    model.train()
    for _ in range(steps):
        x = torch.randn(8, 6)  # drawn from the RNG, like augmentation; dropout draws too
        y = torch.randint(0, 3, (8,))
        loss = nn.functional.cross_entropy(model.head(model.body(x)), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _resume(tmp_path: Path, *, restore_optimizer: bool) -> _Tiny:
    model, optimizer = _make(seed=0)
    _train_steps(model, optimizer, 3)
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, tensors=model.state_dict(), config={"steps": 6}, step=3)
    rng_tensors, rng_meta = capture_rng_state()
    save_training_state(
        sibling_state_path(path), step=3, optimizer=optimizer, extra_tensors=rng_tensors, meta={"rng": rng_meta}
    )

    torch.manual_seed(12345)  # a fresh process: other weights, another RNG position
    fresh, fresh_optimizer = _make(seed=99)
    load_into_module(fresh, load_checkpoint(path).tensors, source=str(path))
    if restore_optimizer:
        step, extra, meta = load_training_state(sibling_state_path(path), fresh_optimizer)
        assert step == 3
        restore_rng_state(extra, meta["rng"])
    else:
        restore_rng_state(rng_tensors, rng_meta)
    _train_steps(fresh, fresh_optimizer, 3)
    return fresh


def test_adamw_resume_is_bit_exact(tmp_path: Path) -> None:
    reference, optimizer = _make(seed=0)
    _train_steps(reference, optimizer, 6)
    resumed = _resume(tmp_path, restore_optimizer=True)
    for (name, expected), actual in zip(reference.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(actual, expected), name


def test_resume_without_optimizer_state_differs(tmp_path: Path) -> None:
    # The control for the test above: the optimizer state is what makes the resume exact.
    reference, optimizer = _make(seed=0)
    _train_steps(reference, optimizer, 6)
    resumed = _resume(tmp_path, restore_optimizer=False)
    assert not torch.equal(resumed.head.weight, reference.head.weight)


def test_training_state_keeps_group_settings_and_extras(tmp_path: Path) -> None:
    model, optimizer = _make(seed=0)
    _train_steps(model, optimizer, 1)
    path = tmp_path / "s.state.safetensors"
    hist = torch.arange(20, dtype=torch.int64)
    save_training_state(path, step=7, optimizer=optimizer, extra_tensors={"hist": hist}, meta={"epoch": 2, "pos": 96})
    _, fresh = _make(seed=1)
    step, extra, meta = load_training_state(path, fresh)
    assert (step, meta) == (7, {"epoch": 2, "pos": 96})
    assert torch.equal(extra["hist"], hist) and list(extra) == ["hist"]
    saved, loaded = optimizer.state_dict(), fresh.state_dict()
    assert loaded["param_groups"] == saved["param_groups"]
    assert loaded["param_groups"][1]["betas"] == (0.8, 0.99)  # a tuple again, as AdamW built it
    for index, entries in saved["state"].items():
        for key, value in entries.items():
            assert torch.equal(loaded["state"][index][key], value), (index, key)


def test_tensor_learning_rate_survives(tmp_path: Path) -> None:
    param = nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([param], lr=torch.tensor(0.01), foreach=False)
    param.grad = torch.ones(3)
    optimizer.step()
    path = tmp_path / "t.state.safetensors"
    save_training_state(path, step=1, optimizer=optimizer, extra_tensors={}, meta={})
    fresh = torch.optim.AdamW([nn.Parameter(torch.ones(3))], lr=torch.tensor(0.5), foreach=False)
    load_training_state(path, fresh)
    assert torch.equal(fresh.param_groups[0]["lr"], torch.tensor(0.01))


def test_training_state_for_another_model_is_refused(tmp_path: Path) -> None:
    _, optimizer = _make(seed=0)
    path = tmp_path / "s.state.safetensors"
    save_training_state(path, step=1, optimizer=optimizer, extra_tensors={}, meta={})
    wider = torch.optim.AdamW([nn.Parameter(torch.zeros(16, 7)), *list(_Tiny().parameters())[1:]])
    with pytest.raises(PparError, match=r"s\.state\.safetensors was saved for another optimizer.*parameter 0"):
        load_training_state(path, wider)
    fewer = torch.optim.AdamW(list(_Tiny().parameters())[:-1])
    with pytest.raises(PparError, match=r"another optimizer \(6 parameters .* vs 5"):
        load_training_state(path, fewer)


# --------------------------------------------------------------------------------------------------- crash safety

_KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import safetensors.torch
    import torch
    from ppar_core.checkpoint import save_checkpoint

    real_write = Path.write_bytes

    def slow_write(self, data):
        # Write half of the new file's bytes, then hang: the parent kills us here, mid-save.
        real_write(self, data[: len(data) // 2])
        real_write(Path(sys.argv[2]), b"writing")
        time.sleep(120)

    Path.write_bytes = slow_write
    save_checkpoint(Path(sys.argv[1]), tensors={"w": torch.full((256, 256), 2.0)}, config={"v": 2}, step=2)
    """
)


def test_sigkill_during_save_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "last.safetensors"
    old = torch.full((256, 256), 1.0)
    save_checkpoint(path, tensors={"w": old}, config={"v": 1}, step=1)
    digest = file_sha256(path)
    marker = tmp_path / "marker"

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    child = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(path), str(marker)], env=env)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert child.poll() is None, "the writer exited before reaching the kill point"
            assert time.monotonic() < deadline, "the writer never reached the kill point"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL

    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in {"last.safetensors", "marker"}]
    assert len(leftovers) == 1 and leftovers[0].startswith(".last.safetensors.")  # the half-written temporary
    assert file_sha256(path) == digest  # the final name still holds the previous checkpoint, byte for byte
    ckpt = load_checkpoint(path)
    assert ckpt.step == 1 and ckpt.config == {"v": 1} and torch.equal(ckpt.tensors["w"], old)
