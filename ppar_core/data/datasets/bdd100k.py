"""BDD100K semantic segmentation (10K): `images/10k/<split>/*.jpg` + `labels/sem_seg/masks/<split>/*.png`.

Masks are single-channel PNGs already in trainIds (0-18, 255 unknown): no mapping. The sibling folder
`labels/sem_seg/colormaps` holds colour visualisations, not labels; pointing at it is the commonest mistake, so it is
detected (missing masks folder, or 3-channel PNGs) and named. The older release layout `seg/images/<split>/*.jpg` +
`seg/labels/<split>/*_train_id.png` is read as well.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from ppar_core.data.base import (
    LabelDecoder,
    SegDataset,
    check_split,
    describe_folder,
    index_files,
    pair_files,
    require_dirs,
    require_pairs,
)
from ppar_core.data.io import TRAINID_MAP
from ppar_core.errors import PparError

SPLITS = ("train", "val")
LAYOUT = "images/10k/<split>/*.jpg and labels/sem_seg/masks/<split>/*.png (or the older seg/images, seg/labels)"
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def build_bdd100k(root: Path, *, split: str = "train") -> SegDataset:
    """BDD100K 10K split train or val under `root` (current or older release layout)."""
    check_split(split, SPLITS, "BDD100K")
    suffixes: tuple[str, ...] = ()
    if (root / "seg").is_dir() and not (root / "images" / "10k").is_dir():
        require_dirs(root, "BDD100K", LAYOUT, f"seg/images/{split}", f"seg/labels/{split}")
        image_dir, mask_dir, suffixes = root / "seg" / "images" / split, root / "seg" / "labels" / split, ("_train_id",)
    else:
        image_dir, mask_dir = root / "images" / "10k" / split, root / "labels" / "sem_seg" / "masks" / split
        colormaps = root / "labels" / "sem_seg" / "colormaps"
        if not mask_dir.is_dir() and colormaps.is_dir():
            raise PparError(
                f"{root} has BDD100K labels/sem_seg/colormaps (colour images) but no labels/sem_seg/masks/{split}: "
                "ppar needs the masks folder of the sem_seg labels archive, not the colormaps."
            )
        require_dirs(root, "BDD100K", LAYOUT, f"images/10k/{split}", f"labels/sem_seg/masks/{split}")
    images, dup_images = index_files(image_dir, extensions=_IMAGE_EXTENSIONS)
    label_files, dup_labels = index_files(mask_dir, extensions=(".png",), suffixes=suffixes)
    pairs, orphans = pair_files(images, label_files, root=root, duplicates=[*dup_images, *dup_labels])
    require_pairs(pairs, orphans, root=root, dataset="BDD100K", layout=LAYOUT, split=split)
    _refuse_colormaps(pairs[0][1], mask_dir)
    return SegDataset(
        name="bdd100k",
        split=split,
        root=root,
        pairs=pairs,
        orphans=orphans,
        decoder=LabelDecoder(id_map=TRAINID_MAP),
    )


def _refuse_colormaps(first_label: Path, mask_dir: Path) -> None:
    # Reading one header is cheap and catches colormaps copied into the masks folder before a long run starts.
    try:
        with Image.open(first_label) as img:
            mode = img.mode
    except OSError:
        return  # an unreadable file is reported as a bad sample when it is read
    if mode in ("RGB", "RGBA"):
        raise PparError(
            f"{first_label} in {mask_dir} is a colour ({mode}) image: these are BDD100K colormaps, not masks; use the "
            f"single-channel masks from labels/sem_seg/masks (found: {describe_folder(mask_dir.parent)})."
        )
