"""Inference benchmark: ppar's sliding-window segmentor vs the bare open_clip ViT-B/16 image tower, on the CPU.

    .venv/bin/python bench/inference.py                 # 1024x2048, windows 512/341, 3 repeats (several minutes)
    .venv/bin/python bench/inference.py --repeats 1 --folder-images 1 --height 512 --width 1024   # quick look

What is measured (random weights of ViT-B/16 shape: no download):
- time: median over --repeats of one 1024x2048 image through `infer_logits` (sliding window 512/341, windows batched
  --batch-size at a time, logits upsampled and accumulated at full resolution), against the bare open_clip image
  tower (`create_model("ViT-B-16", force_image_size=512).visual`) run over the very same batches of windows. Both
  run in this process, alternately, after one warm-up each, so machine drift hits both alike.
- memory: peak resident memory (RSS) of each path, each in a FRESH child process, minus that child's RSS after its
  imports and before its model is built. Why children: glibc keeps freed memory mapped for reuse, so in one process
  the second path would ride on the first's pages and look cheaper; why the baseline: torch and open_clip's code is
  identical for both and is not what is being compared. RSS is sampled every 2 ms from /proc/self/statm by a thread.
  The figure thus counts weights + activations + ppar's full-resolution score buffers.
- `Predictor.predict` throughput (images/s, image decode included) on a folder of --folder-images 1024x2048 PNGs,
  and that child's peak memory (same method).

The last line reads exactly `inference ratio time=<float> memory=<float>` (ppar / bare tower; targets 1.15 and 1.5).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


class PeakRss:
    """Samples this process's resident memory every `interval` seconds; `.peak` is the highest value seen (bytes)."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = self.current()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def current(self) -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * self.page

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current())


def build_ppar(crop: int) -> Any:
    import torch

    from ppar_core.config import ModelConfig
    from ppar_core.modeling.segmentor import build_segmentor, resolve_model_config

    torch.manual_seed(0)
    cfg = resolve_model_config(ModelConfig(preset="vit-b16", pretrained=None))
    model, _ = build_segmentor(cfg, otp=torch.randn(19, 512), pretrained=None)
    return model.eval(), cfg


def build_tower(crop: int) -> Any:
    import gc

    import open_clip
    import torch

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None, force_image_size=crop)
    visual = model.visual.eval()
    del model  # the text tower is not part of an image model (ppar drops it too)
    gc.collect()
    return visual


def inference_config(args: argparse.Namespace) -> Any:
    from ppar_core.engine.inference import InferenceConfig

    return InferenceConfig(mode="slide", crop_size=args.crop, stride=args.stride, batch_size=args.batch_size)


def run_ppar(model: Any, image: Any, args: argparse.Namespace) -> None:
    from ppar_core.engine.inference import infer_logits

    infer_logits(model.predict_logits, image, inference_config(args), num_classes=19)


def run_tower(visual: Any, image: Any, args: argparse.Namespace) -> None:
    """The same windows, in the same batches, through the bare image tower (no head, no accumulation)."""
    import torch

    from ppar_core.engine.inference import window_starts

    h, w = image.shape[-2:]
    boxes = [(y, x) for y in window_starts(h, args.crop, args.stride) for x in window_starts(w, args.crop, args.stride)]
    with torch.inference_mode():
        for first in range(0, len(boxes), args.batch_size):
            chunk = boxes[first : first + args.batch_size]
            batch = torch.cat([image[..., y : y + args.crop, x : x + args.crop] for y, x in chunk])
            visual(batch)


def make_image(args: argparse.Namespace) -> Any:
    import torch

    return torch.randn(1, 3, args.height, args.width, generator=torch.Generator().manual_seed(0))


def child(args: argparse.Namespace) -> None:
    """One memory measurement in this fresh process; prints one JSON line."""
    import open_clip  # noqa: F401
    import torch  # noqa: F401  (imported before the baseline on purpose)

    from ppar_core.engine.inference import infer_logits  # noqa: F401

    meter = PeakRss()
    baseline = meter.current()
    result: dict[str, Any] = {"baseline_mb": baseline / 2**20}
    if args.child == "predict":
        from ppar_core.imageio import read_user_image
        from ppar_core.predict import Predictor

        predictor = Predictor.from_checkpoint(args.checkpoint, device="cpu")
        files = sorted(Path(args.folder).glob("*.png"))
        built = meter.current()
        with meter:
            start = time.perf_counter()
            for path in files:
                predictor.predict(read_user_image(path))
            elapsed = time.perf_counter() - start
        result.update(images=len(files), seconds=elapsed, images_per_s=len(files) / elapsed)
    else:
        model = build_ppar(args.crop)[0] if args.child == "ppar" else build_tower(args.crop)
        image = make_image(args)
        built = meter.current()
        with meter:
            (run_ppar if args.child == "ppar" else run_tower)(model, image, args)
    result.update(after_build_mb=built / 2**20, peak_mb=meter.peak / 2**20)
    result["increase_mb"] = result["peak_mb"] - result["baseline_mb"]
    result["inference_increase_mb"] = result["peak_mb"] - result["after_build_mb"]
    print(json.dumps(result))


def spawn(args: argparse.Namespace, kind: str, **extra: str) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        kind,
        "--height",
        str(args.height),
        "--width",
        str(args.width),
        "--crop",
        str(args.crop),
        "--stride",
        str(args.stride),
        "--batch-size",
        str(args.batch_size),
    ]
    for key, value in extra.items():
        cmd += [f"--{key}", value]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def write_predictor_folder(args: argparse.Namespace, folder: Path) -> Path:
    """A random-weight ViT-B/16 checkpoint (slide 512/341) and --folder-images noise PNGs of the benchmark size."""
    import numpy as np

    from ppar_core.checkpoint import save_checkpoint
    from ppar_core.config import TrainConfig, to_dict
    from ppar_core.imageio import write_png

    model, cfg = build_ppar(args.crop)
    train_cfg = TrainConfig(model=cfg, eval=inference_config(args))
    path = folder / "vitb16-random.safetensors"
    save_checkpoint(path, tensors=model.state_dict(), config=to_dict(train_cfg), step=0)
    rng = np.random.default_rng(0)
    images = folder / "images"
    for i in range(args.folder_images):
        write_png(images / f"{i:03d}.png", rng.integers(0, 256, (args.height, args.width, 3), dtype=np.uint8))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--stride", type=int, default=341)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--folder-images", type=int, default=2, help="0 skips the Predictor throughput part")
    parser.add_argument("--child", choices=["ppar", "tower", "predict"], help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    import torch

    from ppar_core.engine.inference import window_starts

    windows = len(window_starts(args.height, args.crop, args.stride)) * len(
        window_starts(args.width, args.crop, args.stride)
    )
    print(
        f"image {args.height}x{args.width}, {windows} windows {args.crop}/{args.stride}, batch {args.batch_size}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    model, _ = build_ppar(args.crop)
    visual = build_tower(args.crop)
    image = make_image(args)
    with torch.inference_mode():  # warm-up: one batch of windows each (allocator, kernels)
        model.predict_logits(image[..., : args.crop, : args.crop].expand(args.batch_size, -1, -1, -1))
        visual(image[..., : args.crop, : args.crop].expand(args.batch_size, -1, -1, -1))
    times: dict[str, list[float]] = {"ppar": [], "tower": []}
    for repeat in range(args.repeats):
        for name, fn, net in (("ppar", run_ppar, model), ("tower", run_tower, visual)):
            start = time.perf_counter()
            fn(net, image, args)
            times[name].append(time.perf_counter() - start)
        print(f"repeat {repeat + 1}: ppar {times['ppar'][-1]:.2f} s, tower {times['tower'][-1]:.2f} s", flush=True)
    del model, visual
    t_ppar, t_tower = statistics.median(times["ppar"]), statistics.median(times["tower"])
    print(f"time (median of {args.repeats}): ppar {t_ppar:.2f} s, bare tower {t_tower:.2f} s", flush=True)

    mem = {kind: spawn(args, kind) for kind in ("ppar", "tower")}
    for kind, m in mem.items():
        print(
            f"memory {kind}: peak {m['peak_mb']:.0f} MB, +{m['increase_mb']:.0f} MB over imports "
            f"(+{m['inference_increase_mb']:.0f} MB during inference)",
            flush=True,
        )

    if args.folder_images > 0:
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = write_predictor_folder(args, Path(tmp))
            pred = spawn(args, "predict", checkpoint=str(checkpoint), folder=str(Path(tmp) / "images"))
        print(
            f"Predictor.predict: {pred['images']} images of {args.height}x{args.width} in {pred['seconds']:.1f} s = "
            f"{pred['images_per_s']:.3f} images/s, peak {pred['peak_mb']:.0f} MB "
            f"(+{pred['increase_mb']:.0f} MB over imports)",
            flush=True,
        )
    ratio_t = t_ppar / t_tower
    ratio_m = mem["ppar"]["increase_mb"] / mem["tower"]["increase_mb"]
    print(f"inference ratio time={ratio_t:.3f} memory={ratio_m:.3f}")


if __name__ == "__main__":
    main()
