"""Target specs -> the list of `Target`s every evaluation iterates (training, `ppar eval`, saved predictions).

A spec is `NAME` or `NAME=PATH` (aliases such as `bdd` resolve). What a dataset needs as a target comes from its
registry entry (`DatasetInfo`), never from its name:

- `eval_long_side`: evaluated resized so the long side has this many pixels (Mapillary 2048, labels.md) unless the
  protocol sets a scale or a long side itself;
- `classes`: the trainIds its labels use (SYNTHIA's 16), reported as extra figures;
- `parts`: the spec stands for several datasets scored as one target (ACDC: `acdc` is its four conditions, each a
  `Target` of group "acdc"; their confusion matrices are pooled into "ACDC all", and the conditions are sub-rows
  that do not count separately in the mean over targets). `acdc-fog` given explicitly is a target of its own.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image

from ppar_core.data import SegDataset, build_dataset
from ppar_core.data.registry import DatasetInfo, dataset_info, parse_spec
from ppar_core.errors import PparError
from ppar_core.progress import ProgressFn
from ppar_core.protocol import InferenceConfig


@dataclass(frozen=True)
class Target:
    """One dataset to score, and how.

    name: the row name in reports (`cityscapes`, `acdc-fog`); dataset: a `SegDataset` (or any sequence of
    `Sample`s); protocol: the inference protocol it runs with (None for saved predictions, made elsewhere);
    group: the target it counts toward in the mean (its own name, or `acdc` for a condition of `acdc`);
    classes: the trainIds its labels use, None = all 19.
    """

    name: str
    dataset: Any
    protocol: InferenceConfig | None
    group: str
    classes: tuple[int, ...] | None = None


def target_protocol(info: DatasetInfo, base: InferenceConfig) -> InferenceConfig:
    """`base`, with the dataset's own long side (Mapillary: 2048) unless `base` sets a scale or a long side."""
    if info.eval_long_side is not None and base.scale == 1.0 and base.long_side is None:
        return replace(base, long_side=info.eval_long_side)
    return base


def build_targets(
    specs: Sequence[str],
    *,
    split: str,
    data_root: str | Path | None,
    mapillary_map: str,
    protocol: InferenceConfig | None,
) -> list[Target]:
    """Build (and layout-check) the dataset of every target before any image is scored, in the order given.

    A spec whose dataset has `parts` (ACDC) gives one Target per part, in group NAME. A target given twice (also as
    an alias, or as a part of another) is a PparError.
    """
    targets: list[Target] = []
    for spec in specs:
        name, path = parse_spec(spec)
        info = dataset_info(name)
        for part in info.parts or (name,):
            part_info = dataset_info(part)
            taken = next((t for t in targets if t.name == part), None)
            if taken is not None:
                within = "" if taken.group == part else f" (as a part of {taken.group})"
                raise PparError(f"Target {part} is given twice{within}: list each target once.")
            dataset = build_dataset(
                part if path is None else f"{part}={path}",
                split=split,
                data_root=data_root,
                mapillary_map=mapillary_map,
            )
            targets.append(
                Target(
                    name=part,
                    dataset=dataset,
                    protocol=None if protocol is None else target_protocol(part_info, protocol),
                    group=name,
                    classes=part_info.classes,
                )
            )
    return targets


def check_targets(
    targets: Sequence[Target], *, max_images: int | None, skip_bad: bool, progress: ProgressFn | None = None
) -> dict[str, list[str]]:
    """Check every pair a run will evaluate before its first step -> {target: names of bad pairs}.

    Each label is decoded (its values must be ones its id map knows) and compared with its image's size, read from
    the image header, so a bad target stops a run at step 0 rather than at its first evaluation hours later. A bad
    pair is a PparError naming the file, or, with `skip_bad`, listed (evaluation then skips it). Runs on all cores
    (decoding releases the GIL). Datasets that are not files on disk (in-memory samples) have nothing to check.
    """
    bad: dict[str, list[str]] = {}
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        for target in targets:
            dataset = target.dataset
            if not isinstance(dataset, SegDataset):
                continue
            count = len(dataset) if max_images is None else min(len(dataset), max_images)
            problems = []
            checks = pool.map(_pair_problem, [dataset] * count, range(count))
            for done, problem in enumerate(checks, start=1):
                if problem is not None:
                    if not skip_bad:
                        raise PparError(f"{problem} (target {target.name}; data.skip_bad=true skips such pairs).")
                    problems.append(problem)
                if progress is not None:
                    progress(f"check {target.name}", done, count)
            if problems:
                bad[target.name] = problems
    return bad


def _pair_problem(dataset: SegDataset, index: int) -> str | None:
    """None for a good pair, else one sentence naming what is wrong with it."""
    image_path, label_path = dataset.pairs[index]
    try:
        label = dataset.decoder(label_path)
        with Image.open(image_path) as image:
            width, height = image.size
    except PparError as exc:
        return str(exc)
    except (OSError, SyntaxError, ValueError) as exc:
        return f"Image {image_path} cannot be read ({exc})"
    if label.shape != (height, width):
        return (
            f"Label {label_path} is {label.shape[0]}x{label.shape[1]} but its image {image_path.name} is "
            f"{height}x{width} (HxW)"
        )
    return None
