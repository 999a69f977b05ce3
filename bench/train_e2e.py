"""End-to-end training benchmark: `train()` for a few hundred steps on a prepared GTA5-sized copy, then the final
evaluation, and the projected cost of the standard protocol (20,000 steps and 500 Cityscapes-sized images).

    python bench/train_e2e.py                         # GPU: vit-b16 (random weights), batch 8, 512 crops, bf16
    python bench/train_e2e.py --device cpu --preset tiny --frames 4 --size 128x256 --resize 64x128 --crop 32 \\
        --batch 2 --steps 4 --log-every 2 --eval-images 1 --eval-size 128x256     # a smoke run (CPU, seconds)

What runs, in one process (the DataLoader workers are its children):

1. `--frames` synthetic street scenes written as GTA5 stores its own (`write_in_layout("gta5")`, `--size`), then a
   PNG prepared copy of them at the augment's first resize (`ppar data prepare`, `--resize`); `--eval-images`
   scenes in the Cityscapes layout at `--eval-size` (1024x2048, Cityscapes' size) as the evaluation target.
2. `train()` with the `gta5-vit-b16` preset changed as the flags say: `--preset` tower with random weights (no
   download; prototypes from its random text tower), `--batch`, `--crop`, `--steps`, bf16 autocast on CUDA,
   `--workers` loader processes (default: the usable cores minus one), no checkpoint before the end, no target
   during training. From the run's own log records (one per `--log-every` steps; the first window, worker start-up
   and compilation, is left out): samples/s, the median step time, and the share of time the loop waited for data.
3. `evaluate_checkpoint` of the final checkpoint on the Cityscapes-layout images with the preset's protocol (slide,
   512 windows, stride 341): seconds per image.

Projected: `20000 * median step + 500 * seconds per image` (the preset's steps and Cityscapes' 500 val images).
The last line is `e2e samples_per_s=<> median_step_ms=<> data_wait=<> projected_min=<>`; the results go to
--json PATH, or to $OUT/train_e2e.json when $OUT is set.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Why a path insert: the benchmarks are scripts (`python bench/x.py`), and `common` sits beside them.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, size_arg, write_result  # noqa: E402

from ppar_core.config import get_train_preset, merge  # noqa: E402
from ppar_core.data.prepare import prepare_dataset  # noqa: E402
from ppar_core.data.synth.layouts import write_in_layout  # noqa: E402
from ppar_core.engine.train import train  # noqa: E402
from ppar_core.evaluation.evaluate import evaluate_checkpoint  # noqa: E402
from ppar_core.runtime import data_workers  # noqa: E402

PROTOCOL_STEPS = 20_000  # the gta5-vit-b16 preset's
PROTOCOL_EVAL_IMAGES = 500  # Cityscapes val


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    p.add_argument("--preset", default="vit-b16", help="CLIP tower (random weights)")
    p.add_argument("--frames", type=int, default=64, help="GTA5-layout frames (the stream cycles over them)")
    p.add_argument("--size", type=size_arg, default=(1052, 1914), help="frame size HxW (GTA5's)")
    p.add_argument(
        "--resize", type=size_arg, default=(720, 1280), help="the augment's first resize, HxW (the preset's)"
    )
    p.add_argument("--crop", type=int, default=512, help="square training crop")
    p.add_argument("--batch", type=int, default=8, help="images per step")
    p.add_argument("--steps", type=int, default=300, help="training steps")
    p.add_argument("--log-every", type=int, default=25, help="steps per log window (the timing unit)")
    p.add_argument("--workers", type=int, default=None, help="loader processes (default: usable cores minus one)")
    p.add_argument("--eval-images", type=int, default=8, help="Cityscapes-layout images to evaluate")
    p.add_argument("--eval-size", type=size_arg, default=(1024, 2048), help="their size HxW")
    p.add_argument("--data-dir", default=None, help="keep (and reuse) the frames and the copy here")
    p.add_argument("--json", dest="json_path", help="write the results here (default: $OUT/train_e2e.json)")
    return p.parse_args(argv)


def make_data(root: Path, args: argparse.Namespace) -> tuple[Path, Path]:
    """The prepared GTA5-layout source and the Cityscapes-layout target under `root` (reused when present)."""
    gta5, copy, cityscapes = root / "gta5", root / "gta5-prepared", root / "cityscapes"
    if not gta5.exists():
        write_in_layout("gta5", gta5, num=args.frames, size=args.size, split="train")
    prepare_dataset(f"gta5={gta5}", copy, resize=args.resize)  # continues or reuses a complete copy
    if not cityscapes.exists():
        write_in_layout("cityscapes", cityscapes, num=args.eval_images, size=args.eval_size, split="val")
    return copy, cityscapes


def window_figures(records: list[dict[str, Any]], *, batch: int) -> dict[str, float]:
    """From the run's step records (one per log window): samples/s, median step seconds and data wait, over every
    window but the first (worker start-up, compilation and the first allocations land there)."""
    steady = records[1:] or records
    per_step = [batch / r["img_per_s"] for r in steady]
    return {
        "samples_per_s": statistics.median(r["img_per_s"] for r in steady),
        "median_step_s": statistics.median(per_step),
        "data_wait": statistics.median(r["data_wait"] for r in steady),
        "windows": float(len(steady)),
    }


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    workers = data_workers(args.workers)
    with tempfile.TemporaryDirectory(prefix="ppar-e2e-") as scratch:
        root = Path(args.data_dir) if args.data_dir else Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        source, target = make_data(root, args)
        data_s = time.perf_counter() - started
        cfg = merge(
            get_train_preset("gta5-vit-b16"),
            {
                "out": str(Path(scratch) / "run"),
                "device": args.device,
                "iters": args.steps,
                "batch_size": args.batch,
                "log_every": args.log_every,
                "checkpoint_every": 0,
                "eval_every": 0,
                "model": {"preset": args.preset, "pretrained": "none", "quick_gelu": False},
                "data": {
                    "source": [f"gta5={source}"],
                    "targets": [],
                    "workers": workers,
                    "augment": {"resize": list(args.resize), "crop_size": [args.crop, args.crop]},
                },
                "optim": {"warmup_iters": min(50, args.steps)},
            },
        ).validate()
        records: list[dict[str, Any]] = []
        began = time.perf_counter()
        result = train(cfg, on_log=lambda r: records.append(r) if "img_per_s" in r else None)
        train_s = time.perf_counter() - began
        began = time.perf_counter()
        report = evaluate_checkpoint(result.checkpoint, targets=[f"cityscapes={target}"], device=args.device)
        eval_s = time.perf_counter() - began
    figures = window_figures(records, batch=args.batch)
    per_image = eval_s / args.eval_images
    projected_s = PROTOCOL_STEPS * figures["median_step_s"] + PROTOCOL_EVAL_IMAGES * per_image
    payload = {
        "machine": machine_info(args.device),
        "config": vars(args).copy(),
        "workers": workers,
        "data_seconds": data_s,
        "train_seconds": train_s,
        "eval_seconds": eval_s,
        "eval_seconds_per_image": per_image,
        "eval_miou": report["mean_miou"],
        **figures,
        "projected_minutes": projected_s / 60.0,
        "records": records,
    }
    write_result("train_e2e", payload, path=args.json_path)
    print(
        f"{args.steps} steps of {args.preset}, batch {args.batch}, crop {args.crop}, {workers} workers on "
        f"{args.device}: {train_s:.1f} s; evaluation {per_image:.2f} s per {args.eval_size[0]}x{args.eval_size[1]} "
        "image"
    )
    print(
        f"e2e samples_per_s={figures['samples_per_s']:.1f} median_step_ms={1000 * figures['median_step_s']:.1f} "
        f"data_wait={figures['data_wait']:.3f} projected_min={projected_s / 60.0:.1f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
