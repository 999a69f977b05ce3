"""ONNX benchmark: an exported ppar segmentor under onnxruntime (CPU) against ppar's PyTorch path, one image.

    python bench/onnx_inference.py                 # ViT-B/16 shape, 1024x2048, slide 512/341 batched 4, 3 repeats
    python bench/onnx_inference.py --preset tiny --height 96 --width 160 --crop 64 --stride 48 --repeats 1  # smoke

What is measured (random weights of the preset's shape, built as bench/inference.py builds them: nothing is
downloaded):

- export: `ppar_core.export.export_onnx` of a checkpoint of those weights (dynamic N/H/W, fp32): the seconds to
  build, convert and check the graph with the onnx checker, the seconds of its parity check against PyTorch (random
  batch and a synthetic image through the checkpoint's protocol), and the file size.
- time: one synthetic street scene ("synth-real" sample 0) of --height x --width through the sliding-window
  protocol (--crop/--stride, windows batched --batch-size): onnxruntime's CPU execution provider (all cores, its
  default) with the numpy protocol `infer_logits_np`, against `infer_logits` with `PPARSegmentor.infer` (torch's
  default threads). Both after one warm-up, alternating in ABBA order so that drift of a shared machine hits both
  alike; the figures are the medians of --repeats.
- agreement: the share of pixels whose argmax class is the same on both paths, and the largest score difference.

The last line reads exactly `onnx ratio time=<onnxruntime / torch> agreement=<fraction>` (targets <= 0.8 and
>= 0.999). Results also go to --json PATH, or to $OUT/onnx_inference_cpu.json when $OUT is set.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Why a path insert: the benchmarks are scripts (`python bench/x.py`).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TimingResult, alternating_times, machine_info, write_result  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
MB = 2**20


def _parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="vit-b16", help="backbone preset (random weights)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--stride", type=int, default=341)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--no-check", action="store_true", help="skip the export's own parity check")
    parser.add_argument("--json", dest="json_path", help="write the results here (default: $OUT/...json)")
    return parser.parse_args(argv)


def save_random_checkpoint(path: Path, args: argparse.Namespace) -> Any:
    """A checkpoint of random weights of the preset's shape, evaluated with the benchmark's protocol -> its model."""
    import torch

    from ppar_core.checkpoint import save_checkpoint
    from ppar_core.clip.presets import get_preset
    from ppar_core.config import TrainConfig, to_dict
    from ppar_core.modeling.segmentor import ModelConfig, build_segmentor, resolve_model_config
    from ppar_core.prototypes import Prototypes

    torch.manual_seed(0)
    cfg = resolve_model_config(ModelConfig(preset=args.preset, pretrained=None))
    otp = torch.randn(19, get_preset(args.preset).embed_dim)
    model = build_segmentor(cfg, prototypes=Prototypes(otp=otp), load_weights=False).eval()
    train_cfg = TrainConfig(model=cfg, eval=inference_config(args))
    save_checkpoint(path, tensors=model.state_dict(), config=to_dict(train_cfg), step=0)
    return model


def inference_config(args: argparse.Namespace) -> Any:
    from ppar_core.protocol import InferenceConfig

    return InferenceConfig(mode="slide", crop_size=args.crop, stride=args.stride, batch_size=args.batch_size)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    import numpy as np
    import torch

    from ppar_core.data.synth import make_sample
    from ppar_core.export import export_onnx
    from ppar_core.inference import infer_logits
    from ppar_core.normalize import image_to_tensor
    from ppar_core.onnx_predict import OnnxPredictor, infer_logits_np
    from ppar_core.protocol import window_boxes

    cfg = inference_config(args)
    windows = len(window_boxes(args.height, args.width, args.crop, args.stride))
    print(
        f"{args.preset}, image {args.height}x{args.width}, {windows} windows {args.crop}/{args.stride}, batch "
        f"{args.batch_size}; torch {torch.__version__} with {torch.get_num_threads()} threads",
        flush=True,
    )
    results: dict[str, Any] = {"machine": machine_info("cpu"), "config": vars(args).copy()}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / f"{args.preset}-random.safetensors"
        model = save_random_checkpoint(checkpoint, args)
        start = time.perf_counter()
        export = export_onnx(checkpoint, Path(tmp) / "model.onnx", check=not args.no_check)
        total_s = time.perf_counter() - start
        results["export"] = {
            "seconds_total": total_s,
            "export_seconds": export.export_seconds,
            "check_seconds": export.check_seconds,
            "size_bytes": export.size_bytes,
            "exporter": export.metadata.exporter,
            "checks": [
                {"name": c.name, "max_abs_diff": c.max_abs_diff, "agreement": c.agreement} for c in export.checks
            ],
        }
        print(
            f"export: {export.export_seconds:.1f} s (graph, conversion, onnx checker) + {export.check_seconds:.1f} s "
            f"parity check, {export.size_bytes / MB:.1f} MiB, {export.metadata.exporter} exporter",
            flush=True,
        )
        for c in export.checks:
            print(f"  check {c.name}: max |diff| {c.max_abs_diff:.2e}, agreement {c.agreement:.5f}", flush=True)
        predictor = OnnxPredictor.from_file(export.path, device="cpu", inference=cfg)
        print(f"onnxruntime providers: {', '.join(predictor.providers)}", flush=True)

        image = make_sample("synth-real", 0, size=(args.height, args.width))[0]
        array = predictor.to_array(image)
        tensor = image_to_tensor(image, device="cpu")
        outputs: dict[str, Any] = {}

        def run_onnx() -> None:
            outputs["onnxruntime"] = infer_logits_np(predictor.run, array, cfg, num_classes=19)

        def run_torch() -> None:
            outputs["torch"] = infer_logits(model.infer, tensor, cfg, num_classes=19)

        window = array[..., : min(args.crop, args.height), : min(args.crop, args.width)]
        predictor.run(np.ascontiguousarray(np.repeat(window, args.batch_size, axis=0)))  # warm-up: one batch each
        with torch.inference_mode():
            model.infer(torch.from_numpy(np.repeat(window, args.batch_size, axis=0)))

        def progress(repeat: int, times: dict[str, TimingResult]) -> None:
            line = ", ".join(f"{n} {t.times_s[-1]:.2f} s" for n, t in times.items())
            print(f"repeat {repeat + 1}: {line}", flush=True)

        times = alternating_times(
            {"onnxruntime": run_onnx, "torch": run_torch}, repeats=args.repeats, on_repeat=progress
        )
    medians = {name: t.median_s for name, t in times.items()}
    ort_scores, torch_scores = outputs["onnxruntime"][0], outputs["torch"][0].numpy()
    agreement = float((ort_scores.argmax(0) == torch_scores.argmax(0)).mean())
    max_diff = float(np.abs(ort_scores - torch_scores).max())
    results["time"] = {name: {"times_s": t.times_s, "median_s": t.median_s} for name, t in times.items()}
    ratio = medians["onnxruntime"] / medians["torch"]
    results.update(time_ratio=ratio, agreement=agreement, max_abs_diff=max_diff)
    print(
        f"time (median of {args.repeats}): onnxruntime {medians['onnxruntime']:.2f} s, torch {medians['torch']:.2f} s; "
        f"max |score difference| {max_diff:.2e}",
        flush=True,
    )
    write_result("onnx_inference_cpu", results, path=args.json_path)
    print(f"onnx ratio time={ratio:.3f} agreement={agreement:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
