"""distributed: the single-process context, environment errors, and a real 2-process gloo group."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from ppar_core.engine.distributed import DistContext, cleanup_distributed, init_distributed
from ppar_core.errors import PparError

REPO_ROOT = Path(__file__).resolve().parents[1]
_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in _TORCHRUN_ENV:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_single_process_context_is_disabled(clean_env: pytest.MonkeyPatch) -> None:
    ctx = init_distributed("cpu")
    assert ctx == DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), enabled=False)
    assert ctx.is_main
    t = torch.tensor([1.0, 2.0])
    assert ctx.all_reduce_sum(t) is t and torch.equal(t, torch.tensor([1.0, 2.0]))
    payload = {"run": "abc"}
    assert ctx.broadcast_object(payload) is payload
    ctx.barrier()
    cleanup_distributed(ctx)
    assert not torch.distributed.is_initialized()


def test_world_size_one_is_disabled(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("WORLD_SIZE", "1")
    clean_env.setenv("RANK", "0")
    assert not init_distributed("cpu").enabled


def test_bad_device_spec_is_reported(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(PparError, match="Unknown device"):
        init_distributed("tpu")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WORLD_SIZE": "2", "RANK": "0"}, r"WORLD_SIZE=2 is set but MASTER_ADDR, MASTER_PORT is not.*torchrun"),
        ({"WORLD_SIZE": "2", "RANK": "5", "MASTER_ADDR": "localhost", "MASTER_PORT": "1"}, r"RANK=5 is outside 0\.\.1"),
        ({"WORLD_SIZE": "two"}, r"WORLD_SIZE='two' is not an integer"),
    ],
)
def test_broken_torchrun_environment(clean_env: pytest.MonkeyPatch, env: dict[str, str], message: str) -> None:
    for key, value in env.items():
        clean_env.setenv(key, value)
    with pytest.raises(PparError, match=message):
        init_distributed("cpu")
    assert not torch.distributed.is_initialized()


_WORKER = textwrap.dedent(
    """
    import json
    import torch
    from ppar_core.engine.distributed import cleanup_distributed, init_distributed

    ctx = init_distributed("cpu")
    local = torch.tensor([ctx.rank + 1.0, 10.0 * (ctx.rank + 1)])
    total = ctx.all_reduce_sum(local)
    chosen = ctx.broadcast_object({"run_dir": f"runs/chosen-by-{ctx.rank}", "seed": 100 + ctx.rank})
    ctx.barrier()
    result = {
        "rank": ctx.rank, "world_size": ctx.world_size, "local_rank": ctx.local_rank, "device": str(ctx.device),
        "enabled": ctx.enabled, "is_main": ctx.is_main, "backend": torch.distributed.get_backend(),
        "total": total.tolist(), "same_tensor": total is local, "chosen": chosen,
    }
    cleanup_distributed(ctx)
    print(json.dumps(result))
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow  # two fresh interpreters importing torch: 10-20 s on a loaded 2-core machine
def test_two_gloo_processes() -> None:
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO_ROOT),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", _WORKER], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err[-2000:]
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            proc.kill()

    for rank, result in enumerate(results):
        assert result["rank"] == rank and result["local_rank"] == rank
        assert result["world_size"] == 2 and result["enabled"] and result["device"] == "cpu"
        assert result["backend"] == "gloo"
        assert result["is_main"] == (rank == 0)
        assert result["total"] == [3.0, 30.0]  # 1 + 2 and 10 + 20
        assert result["same_tensor"]  # summed in place
        assert result["chosen"] == {"run_dir": "runs/chosen-by-0", "seed": 100}  # rank 0's object everywhere
