"""Synthetic-generator speed: images/s of `make_sample` for each built-in domain, and of `write_domains`, on the CPU.

    python bench/synth_speed.py                        # 100 images of each built-in domain at 256x512 (~25 s, 2 cores)
    python bench/synth_speed.py --num 5 --size 64x128  # a quick look

What is measured, in this process:

- generation: `make_sample(domain, index)` for indices 0..--num-1 (seed 0: the samples `ppar data synth` writes),
  layout and rendering, one domain after the other; one sample per domain is drawn untimed first (it fills the
  renderer's grain-tile cache, a one-off). Per domain and in total: images / seconds, median of --repeats.
- writing (unless --no-write): `write_domains` of the same samples into a temporary folder, end to end: drawing,
  PNG encoding on its writer thread and the atomic, fsynced file writes. Disk speed shows up here, not above.

OpenCV's own thread pool is used as in normal runs (its thread count is recorded with the results).
The last line reads exactly `synth images_per_s=<float>` (generation, all domains together).
Results also go to --json PATH, or to $OUT/synth_speed.json when $OUT is set.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
from pathlib import Path
from typing import Any

import cv2

# Why a path insert: the benchmarks are scripts (`python bench/x.py`), and `common` sits beside them.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, median_seconds, size_arg, write_result  # noqa: E402

from ppar_core.data.synth import DEFAULT_DOMAINS, make_sample, write_domains  # noqa: E402


def _parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=100, help="images per domain")
    parser.add_argument("--size", type=size_arg, default=(256, 512), help="HEIGHTxWIDTH of the images")
    parser.add_argument("--repeats", type=int, default=1, help="timed passes per domain (median reported)")
    parser.add_argument("--no-write", action="store_true", help="skip the write_domains measurement")
    parser.add_argument("--json", dest="json_path", help="write the results here (default: $OUT/synth_speed.json)")
    return parser.parse_args(argv)


def draw(domain: str, num: int, size: tuple[int, int]) -> None:
    """Samples 0..num-1 of `domain` (seed 0), discarded."""
    for index in range(num):
        make_sample(domain, index, size=size)


def time_generation(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """{domain: {times_s, median_s, images_per_s}} of drawing --num samples of each built-in domain."""
    results: dict[str, dict[str, Any]] = {}
    for domain in DEFAULT_DOMAINS:
        make_sample(domain, 0, size=args.size)  # untimed warm-up (see the module docstring)
        timing = median_seconds(functools.partial(draw, domain, args.num, args.size), repeats=args.repeats, warmup=0)
        results[domain] = {
            "times_s": timing.times_s,
            "median_s": timing.median_s,
            "images_per_s": args.num / timing.median_s,
        }
        print(f"{domain}: {args.num} images in {timing.median_s:.2f} s = {args.num / timing.median_s:.1f} images/s")
    return results


def time_writing(args: argparse.Namespace) -> dict[str, Any]:
    """{times_s, median_s, images_per_s} of `write_domains` for all built-in domains into a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="synth_speed_") as tmp:
        timing = median_seconds(
            lambda: write_domains(Path(tmp), domains=DEFAULT_DOMAINS, num=args.num, size=args.size),
            repeats=args.repeats,
            warmup=0,
        )
    images = args.num * len(DEFAULT_DOMAINS)
    print(f"write_domains: {images} images in {timing.median_s:.2f} s = {images / timing.median_s:.1f} images/s")
    return {"times_s": timing.times_s, "median_s": timing.median_s, "images_per_s": images / timing.median_s}


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.num < 1 or args.repeats < 1:
        raise SystemExit("--num and --repeats must be at least 1")
    height, width = args.size
    print(f"{args.num} images per domain at {height}x{width}, {cv2.getNumThreads()} OpenCV threads", flush=True)
    results: dict[str, Any] = {
        "machine": {**machine_info("cpu"), "opencv_threads": cv2.getNumThreads()},
        "config": {**vars(args), "size": [height, width]},
    }
    generation = results["generate"] = time_generation(args)
    images = args.num * len(generation)
    images_per_s = images / sum(d["median_s"] for d in generation.values())
    results["images_per_s"] = images_per_s
    if not args.no_write:
        results["write"] = time_writing(args)
    write_result("synth_speed", results, path=args.json_path)
    print(f"synth images_per_s={images_per_s:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
