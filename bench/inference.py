"""Inference benchmark: ppar's sliding-window segmentor vs the bare open_clip ViT-B/16 image tower, on the CPU.

    python bench/inference.py                  # 1024x2048, windows 512/341 batched 4, 3 repeats (about 8 minutes)
    python bench/inference.py --repeats 1 --folder-images 1 --height 512 --width 1024   # a quick look

What is measured (random weights of ViT-B/16 shape: nothing is downloaded):

- time: one 1024x2048 image through `infer_logits` with `PPARSegmentor.infer` (sliding window 512/341, windows
  batched --batch-size at a time, each window's scores upsampled and accumulated at full resolution), against the
  bare open_clip image tower (`create_model("ViT-B-16", force_image_size=512).visual`) run over the very same
  batches of windows, and ppar's encoder alone over them (to split ppar's time between its tower and the rest).
  All run in this process after a warm-up, alternating in ABBA order (tower, encoder, ppar, ppar, encoder, tower,
  ...) so that drift of a shared machine hits all alike; the figures are the medians of --repeats.
- one transformer block on the tokens of one batch of windows, open_clip's own forward against ppar's
  `fused_block_forward` (same weights): where the encoder's time goes (see docs/PERFORMANCE.md).
- memory: each path runs again in a FRESH child process (bench/common.py says why), which reports its peak RSS
  (VmHWM, reset once the model is built, so the build's transient full CLIP is left out) minus its RSS after the
  imports and before the model is built: weights + activations + ppar's full-resolution score buffers.
- `Predictor.predict` throughput (images/s, decoding included) on a folder of --folder-images PNGs of the same size,
  and that child's peak memory (same method).

The last line reads exactly `inference ratio time=<float> memory=<float>` (ppar / bare tower; targets 1.15 and 1.5).
Results also go to --json PATH, or to $OUT/inference_cpu.json when $OUT is set.
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

# Why a path insert: the benchmarks are scripts (`python bench/x.py`), and the children are started by file path.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    TimingResult,
    alternating_times,
    emit_child_result,
    machine_info,
    max_rss_bytes,
    median_seconds,
    reset_peak_rss,
    rss_bytes,
    run_json_child,
    write_result,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
MB = 2**20
PATHS = ("tower", "ppar")


def _parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--stride", type=int, default=341)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--folder-images", type=int, default=2, help="0 skips the Predictor throughput part")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory children")
    parser.add_argument("--json", dest="json_path", help="write the results here (default: $OUT/inference_cpu.json)")
    parser.add_argument("--child", choices=[*PATHS, "predict"], help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def build_ppar() -> Any:
    import torch

    from ppar_core.modeling.segmentor import ModelConfig, build_segmentor, resolve_model_config
    from ppar_core.prototypes import Prototypes

    torch.manual_seed(0)
    cfg = resolve_model_config(ModelConfig(preset="vit-b16", pretrained=None))
    model = build_segmentor(cfg, prototypes=Prototypes(otp=torch.randn(19, 512)), load_weights=False)
    return model.eval(), cfg


def build_tower(crop: int) -> Any:
    import open_clip
    import torch

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None, force_image_size=crop)
    visual = model.visual.eval()
    del model  # the text tower is not part of an image model (ppar drops it too)
    gc.collect()
    return visual


def inference_config(args: argparse.Namespace) -> Any:
    from ppar_core.protocol import InferenceConfig

    return InferenceConfig(mode="slide", crop_size=args.crop, stride=args.stride, batch_size=args.batch_size)


def run_ppar(model: Any, image: Any, args: argparse.Namespace) -> None:
    from ppar_core.inference import infer_logits

    infer_logits(model.infer, image, inference_config(args), num_classes=19)


def run_tower(visual: Any, image: Any, args: argparse.Namespace) -> None:
    """The same windows, in the same batches, through the bare image tower (no head, no accumulation).

    `visual` may also be ppar's `DenseClipEncoder` (the "encoder" path: ppar's tower without its head)."""
    import torch

    from ppar_core.protocol import window_boxes

    h, w = image.shape[-2:]
    boxes = window_boxes(h, w, args.crop, args.stride)
    with torch.inference_mode():
        for first in range(0, len(boxes), args.batch_size):
            chunk = boxes[first : first + args.batch_size]
            visual(torch.cat([image[..., y : y + args.crop, x : x + args.crop] for y, x in chunk]))


def make_image(args: argparse.Namespace) -> Any:
    import torch

    return torch.randn(1, 3, args.height, args.width, generator=torch.Generator().manual_seed(0))


def time_paths(args: argparse.Namespace) -> dict[str, TimingResult]:
    """Seconds per image of each path, --repeats times, in ABBA order after one warm-up batch each.

    Paths: "tower" (bare open_clip), "ppar" (the whole inference path) and, to split ppar's time, "encoder" (ppar's
    `DenseClipEncoder` alone over the same windows: the tower as ppar runs it, without head or accumulation)."""
    import torch

    model = build_ppar()[0]
    nets = {"tower": build_tower(args.crop), "encoder": model.encoder, "ppar": model}
    runs = {"tower": run_tower, "encoder": run_tower, "ppar": run_ppar}
    image = make_image(args)
    window = image[..., : args.crop, : args.crop].expand(args.batch_size, -1, -1, -1)
    with torch.inference_mode():  # warm-up: one batch of windows each (allocator, kernels, position cache)
        model.infer(window)
        nets["tower"](window)

    def progress(repeat: int, times: dict[str, TimingResult]) -> None:
        print(f"repeat {repeat + 1}: " + ", ".join(f"{n} {t.times_s[-1]:.2f} s" for n, t in times.items()), flush=True)

    workloads = {name: functools.partial(runs[name], nets[name], image, args) for name in nets}
    return alternating_times(workloads, repeats=args.repeats, on_repeat=progress)


def time_block(args: argparse.Namespace, repeats: int = 3) -> dict[str, TimingResult]:
    """One ViT-B/16 block on one batch of windows' tokens: open_clip's forward vs `fused_block_forward`."""
    import torch

    from ppar_core.clip.encoder import fused_block_forward

    block = build_tower(args.crop).transformer.resblocks[0]
    tokens = torch.randn(args.batch_size, 1 + (args.crop // 16) ** 2, block.attn.embed_dim)
    ways = {
        "open_clip": functools.partial(block, tokens),
        "fused": functools.partial(fused_block_forward, block, tokens),
    }
    with torch.inference_mode():
        for fn in ways.values():  # warm-up
            fn()
        return alternating_times(ways, repeats=repeats)


def _memory_child(args: argparse.Namespace) -> None:
    """Child mode: peak RSS of one path above the RSS after the imports (weights + inference), and its parts."""
    import open_clip  # noqa: F401
    import torch  # noqa: F401  (imported before the baseline on purpose)

    from ppar_core.inference import infer_logits  # noqa: F401

    baseline = rss_bytes()
    result: dict[str, Any] = {}
    if args.child == "predict":
        from ppar_core.imageio import read_user_image
        from ppar_core.predict import Predictor

        predictor = Predictor.from_checkpoint(args.checkpoint, device="cpu")
        files = sorted(Path(args.folder).glob("*.png"))
        built = rss_bytes()
        reset_peak_rss()
        seconds = median_seconds(
            lambda: [predictor.predict(read_user_image(p)) for p in files], repeats=1, warmup=0
        ).median_s
        result.update(images=len(files), seconds=seconds, images_per_s=len(files) / seconds)
    else:
        model = build_ppar()[0] if args.child == "ppar" else build_tower(args.crop)
        image = make_image(args)
        gc.collect()
        built = rss_bytes()
        reset_peak_rss()  # the build's transient full CLIP (text tower included) is not inference
        (run_ppar if args.child == "ppar" else run_tower)(model, image, args)
    peak = max_rss_bytes()
    result.update(weights_bytes=built - baseline, peak_bytes=peak - baseline, inference_bytes=peak - built)
    emit_child_result(result)


def _child_args(args: argparse.Namespace) -> list[str]:
    out = [str(Path(__file__).resolve()), "--height", str(args.height), "--width", str(args.width)]
    return out + ["--crop", str(args.crop), "--stride", str(args.stride), "--batch-size", str(args.batch_size)]


def measure_predictor(args: argparse.Namespace) -> dict[str, Any]:
    """A random-weight ViT-B/16 checkpoint (slide 512/341), --folder-images noise PNGs, `Predictor.predict` on them."""
    import numpy as np

    from ppar_core.checkpoint import save_checkpoint
    from ppar_core.config import TrainConfig, to_dict
    from ppar_core.imageio import write_png

    with tempfile.TemporaryDirectory() as tmp:
        model, cfg = build_ppar()
        checkpoint = Path(tmp) / "vitb16-random.safetensors"
        save_checkpoint(checkpoint, tensors=model.state_dict(), config=to_dict(TrainConfig(model=cfg)), step=0)
        del model
        rng = np.random.default_rng(0)
        images = Path(tmp) / "images"
        for i in range(args.folder_images):
            write_png(images / f"{i:03d}.png", rng.integers(0, 256, (args.height, args.width, 3), dtype=np.uint8))
        extra = ["--child", "predict", "--checkpoint", str(checkpoint), "--folder", str(images)]
        return run_json_child([*_child_args(args), *extra])


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.child:
        _memory_child(args)
        return 0

    import torch

    from ppar_core.protocol import window_boxes

    windows = len(window_boxes(args.height, args.width, args.crop, args.stride))
    print(
        f"image {args.height}x{args.width}, {windows} windows {args.crop}/{args.stride}, batch {args.batch_size}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}",
        flush=True,
    )
    results: dict[str, Any] = {"machine": machine_info("cpu"), "config": vars(args).copy()}
    times = time_paths(args)
    medians = {name: t.median_s for name, t in times.items()}
    results["time"] = {name: {"times_s": t.times_s, "median_s": t.median_s} for name, t in times.items()}
    print(
        f"time (median of {args.repeats}): ppar {medians['ppar']:.2f} s, bare tower {medians['tower']:.2f} s, "
        f"ppar's encoder alone {medians['encoder']:.2f} s (so head + VTP + accumulation: ppar / encoder = "
        f"{medians['ppar'] / medians['encoder']:.3f})",
        flush=True,
    )

    block = time_block(args)
    block_s = {name: t.median_s for name, t in block.items()}
    results["block"] = {name: {"times_s": t.times_s, "median_s": t.median_s} for name, t in block.items()}
    print(
        f"one ViT block on {args.batch_size} windows' tokens (median of 3): open_clip {block_s['open_clip']:.3f} s, "
        f"ppar fused attention {block_s['fused']:.3f} s",
        flush=True,
    )

    memory_ratio = float("nan")
    if not args.no_memory:
        mem = {name: run_json_child([*_child_args(args), "--child", name]) for name in PATHS}
        results["memory"] = mem
        for name, m in mem.items():
            print(
                f"memory {name}: +{m['peak_bytes'] / MB:.0f} MB over imports "
                f"(weights {m['weights_bytes'] / MB:.0f} MB, inference +{m['inference_bytes'] / MB:.0f} MB)",
                flush=True,
            )
        memory_ratio = mem["ppar"]["peak_bytes"] / mem["tower"]["peak_bytes"]
    if args.folder_images > 0:
        pred = results["predict"] = measure_predictor(args)
        print(
            f"Predictor.predict: {pred['images']} images of {args.height}x{args.width} in {pred['seconds']:.1f} s = "
            f"{pred['images_per_s']:.3f} images/s, +{pred['peak_bytes'] / MB:.0f} MB over imports",
            flush=True,
        )
    time_ratio = medians["ppar"] / medians["tower"]
    results.update(time_ratio=time_ratio, memory_ratio=memory_ratio)
    write_result("inference_cpu", results, path=args.json_path)
    print(f"inference ratio time={time_ratio:.3f} memory={memory_ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
