"""Training-step benchmark: a full PPAR step against a bare forward+backward of the same CLIP image tower.

    python bench/train_step.py                       # CPU: ViT-B/16 shape, random weights, 512x512, batch 1, fp32
    python bench/train_step.py --device cuda --batch-size 8 --amp --repeats 20   # the GPU figures (bench/gpu.sh)

What is compared, on the same batch (synthetic street scenes and their labels), in the same process:

- `ppar`: one optimizer step by the trainer's own `ppar_core.engine.step.train_step`: uint8 crops normalised on the
  device, forward through `PPARSegmentor`, logits upsampled to the labels, `ppar_loss` with the default `LossConfig`
  at `--progress`, backward, gradient clipping, the AdamW step of `build_optimizer`, the VTP memory and the
  reliability-statistics update.
- `bare`: `open_clip.create_model("ViT-B-16", force_image_size=512).visual` forward, a scalar loss (mean square of
  the pooled embedding), backward; no optimizer. The floor any CLIP-finetuning method pays.

Time: the two steps alternate (bare, ppar, ppar, bare, ...) so that drift of a shared machine hits both alike; the
figure is the median of `--repeats` timed steps after `--warmup` untimed ones. Memory: each workload runs again in a
fresh child process (see bench/common.py for why), which reports its peak minus its baseline taken after the imports
and before the model is built, the peak counter being reset once the model is built (the build's transient full
CLIP is not training): peak RSS on CPU, `max_memory_allocated` on CUDA. So memory includes weights, gradients,
optimizer state and activations. The last line is `train_step ratio time=<float> memory=<float>`.
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Why a path insert: the benchmarks are scripts (`python bench/x.py`), and the children are started by file path.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    alternating_times,
    emit_child_result,
    machine_info,
    max_rss_bytes,
    median_seconds,
    reset_peak_rss,
    rss_bytes,
    run_json_child,
    synchronize,
    write_result,
)

WORKLOADS = ("bare", "ppar")
GIB = 1024**3


@dataclass
class Workload:
    """One thing to time: `step()` runs one training step; `flops` are the model FLOPs of that step."""

    name: str
    step: Callable[[], None]
    flops: float


def _parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeats", type=int, default=5, help="timed steps per workload (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per workload first")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--image-size", type=int, default=512, help="square input side (a multiple of the patch size)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast for both forwards on CUDA, as training does")
    p.add_argument("--preset", default="vit-b16", help="ppar model preset; `tiny` for a quick dry run")
    # 0.4, not 0.5: with the default align_ramp 0.5, beta reaches 1 at progress 0.5 and the L_nce(Z, VTP) term is
    # skipped; at 0.4 every term runs (beta 0.8, q 0.86, reliability weights fully ramped in).
    p.add_argument("--progress", type=float, default=0.4, help="training progress in [0, 1] for the loss schedule")
    p.add_argument("--no-memory", action="store_true", help="skip the two memory child processes")
    p.add_argument("--no-mfu", action="store_true", help="skip the matmul reference and FLOP utilisation")
    p.add_argument("--json", dest="json_path", default=None, help="also write the results here (default: $OUT)")
    p.add_argument("--memory-child", choices=WORKLOADS, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def make_batch(args: argparse.Namespace, device: Any) -> tuple[Any, Any]:
    """Synthetic street scenes -> pixels (B,3,S,S) uint8 and labels (B,S,S) uint8 on `device`, as the trainer's
    DataLoader delivers them (the step normalises on the device)."""
    import numpy as np
    import torch

    from ppar_core.data.synth import make_sample

    size = (args.image_size, args.image_size)
    samples = [make_sample("synth-source", i, size=size, seed=0) for i in range(args.batch_size)]
    pixels = np.stack([img.transpose(2, 0, 1) for img, _ in samples])
    labels = np.stack([lab for _, lab in samples])
    return torch.from_numpy(pixels).to(device), torch.from_numpy(labels).to(device)


def vit_forward_flops(visual: Any, image_size: int, batch: int, *, dense_proj: bool) -> float:
    """Analytic forward FLOPs (multiply-add = 2) of an open_clip ViT tower on a square input.

    Per block, N tokens of width C, MLP width M: qkv 2*N*C*3C, scores and attention-weighted values 2 * 2*N*N*C
    (counted here because PyTorch's FLOP counter misses the CPU attention kernels), output projection 2*N*C*C, MLP
    2 * 2*N*C*M. Plus the patch embedding and the final projection (every token with `dense_proj`, as PPAR's dense
    path does; the class token only otherwise). Norms, activations and softmax are left out (under 1%).
    """
    patch = int(visual.patch_size[0])
    width = int(visual.transformer.width)
    blocks = list(visual.transformer.resblocks)
    mlp = int(blocks[0].mlp.c_fc.out_features)
    patches = (image_size // patch) ** 2
    tokens = patches + 1
    per_block = 2 * tokens * width * 3 * width + 4 * tokens * tokens * width + 2 * tokens * width * width
    per_block += 4 * tokens * width * mlp
    embed = 2 * patches * 3 * patch * patch * width
    proj = 2 * (tokens if dense_proj else 1) * width * int(visual.proj.shape[1])
    return float(batch * (embed + len(blocks) * per_block + proj))


def _counted_flops(fn: Callable[[], object]) -> float:
    # Convolutions and matmuls of `fn` by PyTorch's FLOP counter (no attention inside: the head has none to speak of).
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def build_workloads(args: argparse.Namespace, device: Any, images: Any, labels: Any, only: str | None = None) -> list:
    """The `bare` and `ppar` steps on the given batch (or only one of them). Training FLOPs = 3 x forward."""
    import itertools
    from pathlib import Path

    import open_clip
    import torch

    from ppar_core.clip.presets import get_preset
    from ppar_core.config import OptimConfig, TrainConfig
    from ppar_core.engine.distributed import DistContext
    from ppar_core.engine.optim import build_optimizer
    from ppar_core.engine.step import train_step
    from ppar_core.modeling.segmentor import ModelConfig, build_segmentor
    from ppar_core.normalize import normalize
    from ppar_core.prototypes import Prototypes

    preset = get_preset(args.preset)
    # bf16 autocast on CUDA with --amp, as the trainer's own step does there (it never autocasts on the CPU).
    cuda = torch.device(device).type == "cuda"
    amp_ctx = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if args.amp and cuda else _null_ctx
    workloads: list[Workload] = []
    torch.manual_seed(0)

    if only in (None, "bare"):
        if preset.arch is not None:
            bare = open_clip.create_model(preset.arch, pretrained=None, force_image_size=args.image_size).visual
        else:  # `tiny` is no open_clip built-in: the same tower from its config dict, at the input size
            from open_clip.model import CLIP

            from ppar_core.clip.weights import model_config_of

            cfg = model_config_of(preset)
            cfg["vision_cfg"] = {**cfg["vision_cfg"], "image_size": args.image_size}
            bare = CLIP(**cfg).visual
        bare.to(device).train()

        def bare_step() -> None:
            with amp_ctx():
                pooled = bare(normalize(images))
            pooled.float().square().mean().backward()
            for p in bare.parameters():  # as optimizer.zero_grad(set_to_none=True) would
                p.grad = None

        flops = 3 * vit_forward_flops(bare, args.image_size, args.batch_size, dense_proj=False)
        workloads.append(Workload("bare", bare_step, flops))

    if only in (None, "ppar"):
        model_cfg = ModelConfig(preset=args.preset, pretrained=None, quick_gelu=False)
        protos = Prototypes(otp=torch.randn(19, preset.embed_dim))
        model = build_segmentor(model_cfg, prototypes=protos, load_weights=False).to(device).train()
        cfg = TrainConfig(model=model_cfg, optim=OptimConfig(), iters=1000, batch_size=args.batch_size)
        optimizer = build_optimizer(model, cfg.optim, backbone_lr_mult=model_cfg.backbone_lr_mult)
        dist = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device(device), enabled=False)
        batches = itertools.repeat(
            (
                images,
                labels,
                [""] * args.batch_size,
                torch.zeros(args.batch_size, dtype=torch.long),
                torch.full((args.batch_size, 5), float("nan")),
            )  # fmt: skip
        )
        step_index = int(args.progress * cfg.iters)

        def ppar_step() -> None:
            # The trainer's own step (ppar_core.engine.step): normalisation on the device, forward, loss, backward,
            # clipping, AdamW, VTP memory and reliability statistics; a step that does not log (no host sync).
            train_step(model, model, optimizer, batches, cfg, step_index, dist, checkpoint=Path("unused"), log=False)

        normalised = normalize(images)

        def head_forward() -> None:
            enc = model.encoder(normalised)
            model.classifier(model.head(enc.features), model.vtp(model.otp, enc.dense, enc.global_embedding))

        encoder_flops = vit_forward_flops(model.encoder.visual, args.image_size, args.batch_size, dense_proj=True)
        encoder_counted = _counted_flops(lambda: model.encoder(normalised))
        flops = 3 * (encoder_flops + _counted_flops(head_forward) - encoder_counted)
        workloads.append(Workload("ppar", ppar_step, flops))
    return workloads


class _null_ctx:  # noqa: N801 (used like a function: `with amp_ctx():`)
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def matmul_flops_per_s(device: Any, *, amp: bool) -> float:
    """Achieved FLOP/s of a large square matmul in the compute dtype of the step (bf16 with --amp, else fp32)."""
    import torch

    dev = torch.device(device)
    dtype = torch.bfloat16 if amp else torch.float32
    n, reps = (8192, 50) if dev.type == "cuda" else (2048, 5)
    a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
    timing = median_seconds(lambda: a @ b, repeats=reps, warmup=3, device=dev)
    return 2 * n**3 / timing.median_s


def _memory_child(args: argparse.Namespace) -> None:
    """Child mode: build one workload, run warm-up + 1 steps, report its peak memory above the pre-build baseline."""
    import torch

    device = torch.device(args.device)
    images, labels = make_batch(args, device)
    synchronize(device)
    cuda = device.type == "cuda"
    base = torch.cuda.memory_allocated(device) if cuda else rss_bytes()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    (work,) = build_workloads(args, device, images, labels, only=args.memory_child)
    gc.collect()
    # Why a reset here: building a model makes the whole CLIP (text tower included) before keeping the image tower,
    # a transient that is not part of training. The weights themselves stay resident and are counted.
    built = torch.cuda.memory_allocated(device) if cuda else rss_bytes()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    reset = True if cuda else reset_peak_rss()
    for _ in range(max(args.warmup, 1) + 1):  # AdamW allocates its state in the first step: the second is typical
        work.step()
    synchronize(device)
    if cuda:
        peak, after = torch.cuda.max_memory_allocated(device), torch.cuda.memory_allocated(device)
        method = "torch.cuda.max_memory_allocated during the steps - allocated before the model was built"
    else:
        peak, after = max_rss_bytes(), rss_bytes()
        method = "peak RSS (VmHWM, reset after the build) during the steps - RSS before the model was built"
        method += "" if reset else " (no reset: the build's own peak is included)"
    emit_child_result(
        {
            "peak_bytes": peak - base,
            "built_bytes": built - base,
            "resident_after_bytes": after - base,
            "method": method,
        }
    )


def _model_args(args: argparse.Namespace) -> list[str]:
    out = ["--device", args.device, "--batch-size", str(args.batch_size), "--image-size", str(args.image_size)]
    out += ["--preset", args.preset, "--progress", str(args.progress), "--warmup", str(args.warmup)]
    return out + (["--amp"] if args.amp else [])


def run_step_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Time both workloads in this process, measure their memory in children; returns the results dict."""
    import torch

    device = torch.device(args.device)
    images, labels = make_batch(args, device)
    workloads = build_workloads(args, device, images, labels)
    for work in workloads:
        for _ in range(args.warmup):
            work.step()
    times = alternating_times({w.name: w.step for w in workloads}, repeats=args.repeats, device=device)
    results: dict[str, Any] = {"machine": machine_info(device), "config": vars(args).copy(), "workloads": {}}
    peak_mm = None if args.no_mfu else matmul_flops_per_s(device, amp=args.amp and device.type == "cuda")
    results["matmul_flops_per_s"] = peak_mm
    for work in workloads:
        median = times[work.name].median_s
        entry: dict[str, Any] = {
            "times_s": times[work.name].times_s,
            "median_s": median,
            "img_per_s": args.batch_size / median,
        }
        entry["model_flops"] = work.flops
        if peak_mm:
            entry["mfu"] = work.flops / median / peak_mm
        results["workloads"][work.name] = entry
    del workloads, images, labels
    if not args.no_memory:
        for name in WORKLOADS:
            child = run_json_child([str(Path(__file__).resolve()), "--memory-child", name, *_model_args(args)])
            results["workloads"][name].update(child)
    return results


def _report(results: dict[str, Any]) -> tuple[float, float]:
    # Human lines to stderr-free stdout; returns (time ratio, memory ratio).
    bare, ppar = results["workloads"]["bare"], results["workloads"]["ppar"]
    for name, w in (("bare", bare), ("ppar", ppar)):
        line = f"{name:5s} median {w['median_s']:.3f} s  ({w['img_per_s']:.2f} img/s)"
        line += f"  times {' '.join(f'{t:.3f}' for t in w['times_s'])}"
        if "mfu" in w:
            line += f"  model {w['model_flops'] / 1e9:.0f} GFLOP  MFU {100 * w['mfu']:.1f}%"
        if "peak_bytes" in w:
            line += f"  peak {w['peak_bytes'] / GIB:.2f} GiB (resident after {w['resident_after_bytes'] / GIB:.2f})"
        print(line)
    if results.get("matmul_flops_per_s"):
        print(f"matmul reference {results['matmul_flops_per_s'] / 1e12:.3f} TFLOP/s")
    time_ratio = ppar["median_s"] / bare["median_s"]
    mem_ratio = ppar["peak_bytes"] / bare["peak_bytes"] if "peak_bytes" in ppar else float("nan")
    return time_ratio, mem_ratio


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.memory_child:
        _memory_child(args)
        return 0
    results = run_step_benchmark(args)
    time_ratio, mem_ratio = _report(results)
    results.update(time_ratio=time_ratio, memory_ratio=mem_ratio)
    write_result(f"train_step_{torch_device_kind(args.device)}", results, path=args.json_path)
    print(f"train_step ratio time={time_ratio:.3f} memory={mem_ratio:.3f}")
    return 0


def torch_device_kind(device: str) -> str:
    return device.split(":")[0]


if __name__ == "__main__":
    sys.exit(main())
