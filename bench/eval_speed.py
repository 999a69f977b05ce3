"""Evaluation benchmark: `ppar eval`'s loop today against v0.1's, on the same model and images, in one run.

    python bench/eval_speed.py                      # 40 synthetic 512x1024 images, synth-tiny's model, slide 512/341
    python bench/eval_speed.py --images 4 --size 128x256 --repeats 1   # a smoke run

Both loops score the same checkpoint (a `tiny` segmentor with random weights) on the same images with the same
protocol, alternating ABBA (bench/common.py). The model is the `synth-tiny` preset's (the `tiny` tower with the
demo's head), as `ppar eval` runs it on the demo's checkpoints:

- `v0.1`: each image decoded in the loop, normalised in float32 on the CPU (numpy), `infer_logits`, `argmax`, the
  confusion matrix; the reference, kept below as `v01_evaluate`.
- `today`: `ppar_core.evaluation.evaluate.evaluate_dataset`: images decoded ahead in threads, uint8
  moved to the device and normalised there, `max(dim).indices` instead of argmax.

The mIoU of both must agree to the last digit. The last line is `eval ratio time=<today / v0.1> miou_equal=<bool>`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import alternating_times, machine_info, size_arg, write_result  # noqa: E402

from ppar_core.config import get_train_preset  # noqa: E402
from ppar_core.data import build_dataset  # noqa: E402
from ppar_core.data.synth import write_domains  # noqa: E402
from ppar_core.evaluation.evaluate import evaluate_dataset  # noqa: E402
from ppar_core.inference import infer_logits  # noqa: E402
from ppar_core.metrics import ConfusionAccumulator  # noqa: E402
from ppar_core.modeling.segmentor import build_segmentor, resolve_model_config  # noqa: E402
from ppar_core.normalize import CLIP_MEAN, CLIP_STD  # noqa: E402
from ppar_core.protocol import InferenceConfig  # noqa: E402
from ppar_core.prototypes import Prototypes  # noqa: E402
from ppar_core.runtime import data_workers  # noqa: E402


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=40)
    p.add_argument("--size", type=size_arg, default=(512, 1024), help="image size HxW")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=None, help="today's decoding threads (default: cores - 1)")
    p.add_argument("--json", dest="json_path", help="write the results here (default: $OUT/eval_speed.json)")
    return p.parse_args(argv)


def v01_evaluate(model: Any, dataset: Any, cfg: Any, num_classes: int) -> float:
    """v0.1's evaluation loop -> mIoU (percent)."""
    mean = np.asarray(CLIP_MEAN, dtype=np.float32) * 255.0
    inv_std = 1.0 / (np.asarray(CLIP_STD, dtype=np.float32) * 255.0)
    accumulator = ConfusionAccumulator(num_classes)
    for index in range(len(dataset)):
        sample = dataset[index]
        chw = ((sample.image.astype(np.float32) - mean) * inv_std).transpose(2, 0, 1)
        image = torch.from_numpy(np.ascontiguousarray(chw))[None]
        scores = infer_logits(model.infer, image, cfg, num_classes=num_classes)
        accumulator.update(scores[0].argmax(dim=0), torch.from_numpy(sample.label.astype(np.int64)))
    return accumulator.compute().miou


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    height, width = args.size
    torch.manual_seed(0)
    # The synth-tiny preset's model (the demo's: `ppar eval` on its checkpoints), random weights.
    model_cfg = resolve_model_config(replace(get_train_preset("synth-tiny").model, pretrained=None))
    model = build_segmentor(model_cfg, prototypes=Prototypes(otp=torch.randn(19, 64)), load_weights=False).eval()
    protocol = InferenceConfig(mode="slide", crop_size=512, stride=341)
    workers = data_workers(args.workers)
    results: dict[str, Any] = {"machine": machine_info("cpu"), "config": vars(args).copy(), "workers": workers}
    with tempfile.TemporaryDirectory() as tmp:
        write_domains(Path(tmp), domains=("synth-real",), num=args.images, size=(height, width))
        dataset = build_dataset("synth-real", data_root=tmp, split="val")
        mious: dict[str, float] = {}

        def v01() -> None:
            mious["v0.1"] = v01_evaluate(model, dataset, protocol, 19)

        def today() -> None:
            metrics = evaluate_dataset(model.infer, dataset, protocol, num_classes=19, device="cpu", workers=workers)
            mious["today"] = metrics.miou

        v01()  # warm-up: first-call costs
        today()
        timing = alternating_times({"v0.1": v01, "today": today}, repeats=args.repeats)
    medians = {name: t.median_s for name, t in timing.items()}
    results["seconds"] = medians
    results["miou"] = mious
    equal = f"{mious['v0.1']:.6f}" == f"{mious['today']:.6f}"
    for name, seconds in medians.items():
        print(
            f"{name:>6}: {seconds:.2f} s for {args.images} images ({args.images / seconds:.1f} images/s), "
            f"mIoU {mious[name]:.6f}"
        )
    write_result("eval_speed", results, path=args.json_path)
    print(f"eval ratio time={medians['today'] / medians['v0.1']:.3f} miou_equal={equal}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
