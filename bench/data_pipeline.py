"""Data-path benchmark: training samples per second on one pinned core, v0.1's path against today's.

    python bench/data_pipeline.py                      # GTA5-sized frames (1052x1914), the gta5-vit-b16 augment
    python bench/data_pipeline.py --frames 4 --size 128x256 --samples 8 --repeats 1   # a smoke run

The frames are synthetic street scenes written as GTA5 stores its own (`write_in_layout("gta5")`: RGB PNGs and
8-bit palettised labelId PNGs), so every decode and mapping step is the real one. Measured, in one process pinned
to one core, alternating ABBA so drift of a shared machine hits every path alike (`bench/common.py`):

- `v0.1`: the sample path as ppar v0.1 computed it (kept below as `v01_sample`, the reference): PIL decode, label
  mapping by bincount and int64 fancy indexing, a full-frame resize, a full random rescale, pad and crop, flip by
  slicing, photometric distortion in float32, CLIP normalisation in float32 on the CPU, int64 labels.
- `original`: today's `TrainSamples` on the same files (OpenCV PNG decode, label lookup tables, ONE resampling of
  the crop, cv2 flips, photometric lookup tables, uint8 out: the training step normalises on the device).
- `png`, `jpeg`: today's path on a prepared copy (`ppar data prepare`), stored at the augment's first resize.

Also: a per-stage breakdown of today's path, and a multi-worker figure (all cores, a DataLoader feeding a consumer
that does nothing). The last line is `data ratio prepared=<png / v0.1> original=<original / v0.1>`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import alternating_times, machine_info, median_seconds, size_arg, write_result  # noqa: E402

from ppar_core.config import TRAIN_PRESETS  # noqa: E402
from ppar_core.data import build_dataset  # noqa: E402
from ppar_core.data.io import read_image, read_label_index  # noqa: E402
from ppar_core.data.prepare import prepare_dataset  # noqa: E402
from ppar_core.data.synth.layouts import write_in_layout  # noqa: E402
from ppar_core.data.transforms import photometric_distortion, random_flip, random_scale_crop, resize  # noqa: E402
from ppar_core.engine.sampling import TrainSamples  # noqa: E402
from ppar_core.normalize import CLIP_MEAN, CLIP_STD  # noqa: E402

AUGMENT = TRAIN_PRESETS["gta5-vit-b16"].data.augment


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=16, help="GTA5-layout frames to write and read")
    p.add_argument("--size", type=size_arg, default=(1052, 1914), help="frame size HxW (GTA5's)")
    p.add_argument("--samples", type=int, default=24, help="training samples per timed run of a path")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each path, alternating")
    p.add_argument("--core", type=int, default=0, help="the core the per-core figures are pinned to")
    p.add_argument("--workers", type=int, default=None, help="the multi-worker figure: DataLoader workers (all cores)")
    p.add_argument("--data-dir", default=None, help="keep (and reuse) the frames and prepared copies here")
    p.add_argument(
        "--noise", type=float, default=0.0, help="Gaussian noise (grey levels) added to the frames: photo-like PNGs"
    )
    p.add_argument("--json", dest="json_path", help="write the results here (default: $OUT/data_pipeline.json)")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------------- v0.1's path
# The reference: the per-sample work of ppar v0.1, written out so that the same run measures both.


def _v01_map(raw: np.ndarray, lut: np.ndarray, known: np.ndarray) -> np.ndarray:
    values = np.flatnonzero(np.bincount(raw.ravel()))
    assert known[values].all()
    return lut[raw]


def _v01_photometric(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = image.astype(np.float32)
    if rng.integers(2):
        out += float(rng.uniform(-32, 32))
    contrast_first = bool(rng.integers(2))
    if contrast_first and rng.integers(2):
        out *= float(rng.uniform(0.5, 1.5))
    do_saturation, do_hue = bool(rng.integers(2)), bool(rng.integers(2))
    if do_saturation or do_hue:
        hsv = cv2.cvtColor(np.clip(out, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV).astype(np.float32)
        if do_saturation:
            hsv[..., 1] = np.clip(hsv[..., 1] * float(rng.uniform(0.5, 1.5)), 0, 255)
        if do_hue:
            hsv[..., 0] = (hsv[..., 0] + int(rng.integers(-18, 19))) % 180
        out = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    if not contrast_first and rng.integers(2):
        out *= float(rng.uniform(0.5, 1.5))
    return np.clip(out, 0, 255).round().astype(np.uint8)


def v01_sample(pairs: list[tuple[Path, Path]], k: int, id_map: Any) -> tuple[np.ndarray, np.ndarray]:
    """Sample k the way v0.1 made it -> (image (3,h,w) float32 normalised, label (h,w) int64)."""
    image_path, label_path = pairs[k % len(pairs)]
    with Image.open(image_path) as img:  # as v0.1's read_image: asarray of the decoded image, not of a converted copy
        img.load()
        image = np.ascontiguousarray(np.asarray(img if img.mode == "RGB" else img.convert("RGB"), dtype=np.uint8))
    with Image.open(label_path) as img:  # v0.1 decoded labels with PIL too (palette indices, forced full decode)
        img.load()
        raw = np.asarray(img if img.mode in ("P", "L", "I;16") else img.convert("L"))
    label = _v01_map(raw, id_map.lut, id_map.known)
    rng = np.random.default_rng([0, k])
    image, label = resize(image, label, size=AUGMENT.resize)
    factor = float(rng.uniform(*AUGMENT.scale_range))
    h, w = label.shape
    image, label = resize(image, label, size=(max(1, round(h * factor)), max(1, round(w * factor))))
    ch, cw = AUGMENT.crop_size
    pad_h, pad_w = max(0, ch - label.shape[0]), max(0, cw - label.shape[1])
    image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)))
    label = np.pad(label, ((0, pad_h), (0, pad_w)), constant_values=255)
    for _ in range(10):
        top, left = int(rng.integers(0, label.shape[0] - ch + 1)), int(rng.integers(0, label.shape[1] - cw + 1))
        crop = label[top : top + ch, left : left + cw]
        counts = np.bincount(crop.ravel(), minlength=256)
        counts[255] = 0
        if counts.sum() > 0 and counts.max() <= AUGMENT.cat_max_ratio * counts.sum():
            break
    image, label = image[top : top + ch, left : left + cw], crop
    if rng.random() < AUGMENT.flip_prob:
        image, label = np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(label[:, ::-1])
    image = _v01_photometric(image, rng)
    mean = np.asarray(CLIP_MEAN, dtype=np.float32) * 255.0
    inv_std = 1.0 / (np.asarray(CLIP_STD, dtype=np.float32) * 255.0)
    chw = np.ascontiguousarray(((image.astype(np.float32) - mean) * inv_std).transpose(2, 0, 1))
    return chw, label.astype(np.int64)


# ----------------------------------------------------------------------------------------------------- the bench


def _per_stage(dataset: Any, samples: int) -> dict[str, float]:
    """Milliseconds per sample of each stage of today's path on the original frames (median over `samples`)."""
    times: dict[str, list[float]] = {}

    def timed(name: str, fn: Any) -> Any:
        start = time.perf_counter()
        out = fn()
        times.setdefault(name, []).append(1000 * (time.perf_counter() - start))
        return out

    for k in range(samples):
        image_path, label_path = dataset.pairs[k % len(dataset)]
        rng = np.random.default_rng([0, k])
        image = timed("decode image", lambda p=image_path: read_image(p))
        raw = timed("decode label", lambda p=label_path: read_label_index(p))
        label = timed("map label (lookup table)", lambda r=raw, p=label_path: dataset.decoder.id_map.apply(r, path=p))
        image, label = timed(
            "resize to the augment's size", lambda i=image, lb=label: resize(i, lb, size=AUGMENT.resize)
        )
        image, label = timed(
            "rescale + crop (one resampling)",
            lambda i=image, lb=label, r=rng: random_scale_crop(
                i,
                lb,
                scale_range=AUGMENT.scale_range,
                size=AUGMENT.crop_size,
                rng=r,
                cat_max_ratio=AUGMENT.cat_max_ratio,
            ),
        )
        image, label = timed("flip", lambda i=image, lb=label, r=rng: random_flip(i, lb, prob=AUGMENT.flip_prob, rng=r))
        timed("photometric (lookup tables)", lambda i=image, r=rng: photometric_distortion(i, rng=r))
    return {name: float(np.median(values)) for name, values in times.items()}


def _throughput(make: Any, samples: int, repeats: int, names: list[str]) -> dict[str, float]:
    """samples/s of each path, timed alternately (ABBA) over `repeats` rounds of `samples` samples."""
    start = {name: 0 for name in names}

    def run(name: str) -> None:
        k0 = start[name]
        for k in range(k0, k0 + samples):
            make[name](k)
        start[name] = k0 + samples  # new samples every round: no cache helps a later round

    for name in names:  # warm-up: imports, first-call costs
        make[name](10**6)
    timing = alternating_times({n: (lambda n=n: run(n)) for n in names}, repeats=repeats)
    return {name: samples / timing[name].median_s for name in names}


def _multi_worker(dataset: Any, workers: int, batches: int) -> float:
    """samples/s of a DataLoader with `workers` processes on all cores feeding a consumer that does nothing."""
    import torch

    from ppar_core.engine.sampling import StreamSampler
    from ppar_core.runtime import one_opencv_thread

    loader = torch.utils.data.DataLoader(
        TrainSamples(dataset, AUGMENT, seed=0),
        batch_size=8,
        sampler=StreamSampler(batch_size=8, accum_steps=1, rank=0, world_size=1, start_step=0),
        num_workers=workers,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )
    with one_opencv_thread():
        it = iter(loader)
    for _ in range(max(2, workers)):
        next(it)  # every worker started and its queue filled
    timing = median_seconds(lambda: [next(it) for _ in range(batches)], repeats=1, warmup=0)
    return 8 * batches / timing.median_s


def add_noise(folder: Path, *, sigma: float) -> None:
    """Add Gaussian noise of `sigma` grey levels to every PNG in `folder`, in place (seeded per file). Rendered
    frames are smooth and compress (and decode) better than photos; the noise brings them closer to real frames."""
    for index, path in enumerate(sorted(folder.glob("*.png"))):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        noise = np.random.default_rng(index).normal(0.0, sigma, image.shape)
        assert cv2.imwrite(str(path), np.clip(image + noise, 0, 255).astype(np.uint8))


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    height, width = args.size
    all_cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    results: dict[str, Any] = {"machine": machine_info("cpu"), "config": vars(args).copy()}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.data_dir or tmp)
        gta5 = root / ("gta5" if args.noise <= 0 else f"gta5-noise{args.noise:g}")
        if not (gta5 / "labels").is_dir() or len(list((gta5 / "labels").glob("*.png"))) < args.frames:
            print(f"writing {args.frames} GTA5-layout frames of {height}x{width} to {gta5}", flush=True)
            write_in_layout("gta5", gta5, num=args.frames, size=(height, width))
            if args.noise > 0:
                add_noise(gta5 / "images", sigma=args.noise)
        original = build_dataset(f"gta5={gta5}")
        datasets = {"original": original}
        for fmt in ("png", "jpeg"):
            copy = root / f"{gta5.name}-{fmt}"
            start = time.perf_counter()
            prepare_dataset(f"gta5={gta5}", copy, split="train", resize=AUGMENT.resize, image_format=fmt)
            results[f"prepare_{fmt}_s"] = time.perf_counter() - start
            datasets[fmt] = build_dataset(f"gta5={copy}")
            sizes = [p.stat().st_size for p in (copy.rglob("*")) if p.is_file() and p.suffix in (".png", ".jpg")]
            results[f"{fmt}_bytes_per_frame"] = sum(sizes) / max(1, len(original))
        # Per-core figures: one core, one thread everywhere.
        if all_cores:
            os.sched_setaffinity(0, {all_cores[args.core % len(all_cores)]})
        cv2.setNumThreads(1)
        torch.set_num_threads(1)
        id_map = original.decoder.id_map
        samplers = {name: TrainSamples(ds, AUGMENT, seed=0) for name, ds in datasets.items()}
        make = {"v0.1": lambda k: v01_sample(original.pairs, k, id_map)}
        make.update({name: (lambda k, s=s: s[k]) for name, s in samplers.items()})
        names = list(make)
        rates = _throughput(make, args.samples, args.repeats, names)
        results["samples_per_s_one_core"] = rates
        for name in names:
            print(f"{name:>9}: {rates[name]:6.1f} samples/s on one core ({1000 / rates[name]:.0f} ms per sample)")
        stages = _per_stage(original, min(args.samples, 12))
        results["stages_ms"] = stages
        print("today's path on the original frames, median ms per sample:")
        for name, ms in stages.items():
            print(f"  {name:<32} {ms:6.1f}")
        if all_cores:
            os.sched_setaffinity(0, set(all_cores))
        cv2.setNumThreads(0)
        workers = args.workers if args.workers is not None else max(1, len(all_cores) or os.cpu_count() or 1)
        rate = _multi_worker(datasets["png"], workers, batches=max(4, args.samples // 4))
        results["multi_worker"] = {"workers": workers, "dataset": "png", "samples_per_s": rate}
        print(f"{workers} worker(s) on all cores, PNG prepared copy: {rate:.1f} samples/s")
    write_result("data_pipeline", results, path=args.json_path)
    print(f"data ratio prepared={rates['png'] / rates['v0.1']:.2f} original={rates['original'] / rates['v0.1']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
