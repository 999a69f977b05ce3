"""Label spaces, palettes and id mappings: the one source of truth for data loaders, prompts and overlays.

Every dataset ppar reads is mapped into the Cityscapes 19-class trainId space (0-18, 255 = ignore). The tables here
follow `shared/reference/labels.md`; tests compare them with `cityscapesscripts.helpers.labels`.

Lookup tables (`*_LUT`) are uint8 arrays of length 256 (or 65536 for 16-bit sources) so that mapping a label image
is one fancy-indexing operation: `trainids = LUT[raw]`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ppar_core.errors import PparError

IGNORE_INDEX = 255


@dataclass(frozen=True)
class LabelClass:
    """One evaluation class: its trainId, name, Cityscapes labelId and RGB colour."""

    train_id: int
    name: str
    label_id: int
    color: tuple[int, int, int]


CITYSCAPES_CLASSES: tuple[LabelClass, ...] = (
    LabelClass(0, "road", 7, (128, 64, 128)),
    LabelClass(1, "sidewalk", 8, (244, 35, 232)),
    LabelClass(2, "building", 11, (70, 70, 70)),
    LabelClass(3, "wall", 12, (102, 102, 156)),
    LabelClass(4, "fence", 13, (190, 153, 153)),
    LabelClass(5, "pole", 17, (153, 153, 153)),
    LabelClass(6, "traffic light", 19, (250, 170, 30)),
    LabelClass(7, "traffic sign", 20, (220, 220, 0)),
    LabelClass(8, "vegetation", 21, (107, 142, 35)),
    LabelClass(9, "terrain", 22, (152, 251, 152)),
    LabelClass(10, "sky", 23, (70, 130, 180)),
    LabelClass(11, "person", 24, (220, 20, 60)),
    LabelClass(12, "rider", 25, (255, 0, 0)),
    LabelClass(13, "car", 26, (0, 0, 142)),
    LabelClass(14, "truck", 27, (0, 0, 70)),
    LabelClass(15, "bus", 28, (0, 60, 100)),
    LabelClass(16, "train", 31, (0, 80, 100)),
    LabelClass(17, "motorcycle", 32, (0, 0, 230)),
    LabelClass(18, "bicycle", 33, (119, 11, 32)),
)

NUM_CLASSES = len(CITYSCAPES_CLASSES)
CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in CITYSCAPES_CLASSES)
# The words for each class, its name first, then the synonyms: what the text prototypes prompt with
# (`clip.text.CLASS_PROMPTS`) and what the embedded prior's captions say, so that its text tower learns every word it
# will be asked about.
CLASS_WORDS: dict[str, tuple[str, ...]] = {
    "road": ("road",),
    "sidewalk": ("sidewalk", "pavement"),
    "building": ("building",),
    "wall": ("wall",),
    "fence": ("fence",),
    "pole": ("pole",),
    "traffic light": ("traffic light",),
    "traffic sign": ("traffic sign",),
    "vegetation": ("vegetation", "tree"),
    "terrain": ("terrain", "grass"),
    "sky": ("sky",),
    "person": ("person", "pedestrian"),
    "rider": ("rider",),
    "car": ("car",),
    "truck": ("truck",),
    "bus": ("bus",),
    "train": ("train",),
    "motorcycle": ("motorcycle",),
    "bicycle": ("bicycle",),
}
THING_TRAIN_IDS: tuple[int, ...] = tuple(range(11, 19))

# (19, 3) uint8 colours by trainId; IGNORE pixels are drawn black by the visualisers.
PALETTE = np.array([c.color for c in CITYSCAPES_CLASSES], dtype=np.uint8)

# trainId -> Cityscapes labelId, for benchmark submissions (index 255 maps to 0, "unlabeled").
TRAINID_TO_LABELID = np.zeros(256, dtype=np.uint8)
for _c in CITYSCAPES_CLASSES:
    TRAINID_TO_LABELID[_c.train_id] = _c.label_id

# Cityscapes labelId -> trainId; GTA5 labels use the same labelIds. Every other id (0-6, 9, 10, 14-16, 18, 29, 30,
# and anything above 33) is ignored.
LABELID_TO_TRAINID = np.full(256, IGNORE_INDEX, dtype=np.uint8)
for _c in CITYSCAPES_CLASSES:
    LABELID_TO_TRAINID[_c.label_id] = _c.train_id

# SYNTHIA-RAND-CITYSCAPES class id -> trainId. Terrain (9), truck (14) and train (16) do not occur in SYNTHIA.
SYNTHIA_ID_TO_TRAINID_PAIRS: tuple[tuple[int, int], ...] = (
    (3, 0), (4, 1), (2, 2), (21, 3), (5, 4), (7, 5), (15, 6), (9, 7), (6, 8), (16, 9),
    (1, 10), (10, 11), (17, 12), (8, 13), (18, 14), (19, 15), (20, 16), (12, 17), (11, 18),
)  # fmt: skip
SYNTHIA_ID_TO_TRAINID = np.full(65536, IGNORE_INDEX, dtype=np.uint8)
for _src, _dst in SYNTHIA_ID_TO_TRAINID_PAIRS:
    SYNTHIA_ID_TO_TRAINID[_src] = _dst

# The 16 classes SYNTHIA-trained models are evaluated on (trainIds), besides the full 19.
SYNTHIA16_TRAIN_IDS: tuple[int, ...] = tuple(i for i in range(NUM_CLASSES) if i not in (9, 14, 16))

# Mapillary Vistas v1.2: the 66 class names (readable form of config_v1.2.json), by class index.
MAPILLARY_V12_NAMES: tuple[str, ...] = (
    "Bird", "Ground Animal", "Curb", "Fence", "Guard Rail", "Barrier", "Wall", "Bike Lane",
    "Crosswalk - Plain", "Curb Cut", "Parking", "Pedestrian Area", "Rail Track", "Road", "Service Lane",
    "Sidewalk", "Bridge", "Building", "Tunnel", "Person", "Bicyclist", "Motorcyclist", "Other Rider",
    "Lane Marking - Crosswalk", "Lane Marking - General", "Mountain", "Sand", "Sky", "Snow", "Terrain",
    "Vegetation", "Water", "Banner", "Bench", "Bike Rack", "Billboard", "Catch Basin", "CCTV Camera",
    "Fire Hydrant", "Junction Box", "Mailbox", "Manhole", "Phone Booth", "Pothole", "Street Light", "Pole",
    "Traffic Sign Frame", "Utility Pole", "Traffic Light", "Traffic Sign (Back)", "Traffic Sign (Front)",
    "Trash Can", "Bicycle", "Boat", "Bus", "Car", "Caravan", "Motorcycle", "On Rails", "Other Vehicle",
    "Trailer", "Truck", "Wheeled Slow", "Car Mount", "Ego Vehicle", "Unlabeled",
)  # fmt: skip

# Mapillary id -> (trainId under the `id` map (RobustNet/HRDA), trainId under the `name` map (Rein/openseg)).
# Ids not listed map to 255 in both.
MAPILLARY_TO_TRAINID_PAIRS: dict[int, tuple[int, int]] = {
    2: (1, 1), 3: (4, 4), 6: (3, 3), 7: (255, 0), 8: (255, 0), 9: (255, 1), 10: (255, 0), 11: (255, 1),
    13: (0, 0), 14: (255, 0), 15: (1, 1), 17: (2, 2), 19: (11, 11), 20: (12, 12), 21: (12, 12), 22: (12, 12),
    23: (255, 0), 24: (0, 0), 27: (10, 10), 29: (9, 9), 30: (8, 8), 41: (0, 255), 44: (255, 5), 45: (5, 5),
    46: (255, 7), 47: (5, 5), 48: (6, 6), 49: (255, 7), 50: (7, 7), 52: (18, 18), 54: (15, 15), 55: (13, 13),
    57: (17, 17), 58: (16, 16), 61: (14, 14),
}  # fmt: skip

MAPILLARY_MAPS: tuple[str, ...] = ("id", "name")


def _mapillary_lut(which: int) -> np.ndarray:
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for src, pair in MAPILLARY_TO_TRAINID_PAIRS.items():
        lut[src] = pair[which]
    return lut


MAPILLARY_LUTS: dict[str, np.ndarray] = {"id": _mapillary_lut(0), "name": _mapillary_lut(1)}


def mapillary_lut(mapping: str) -> np.ndarray:
    """The 256-entry Mapillary id -> trainId table for `mapping` ("id" or "name")."""
    if mapping not in MAPILLARY_LUTS:
        raise PparError(f"Unknown Mapillary mapping {mapping!r}: use one of {', '.join(MAPILLARY_MAPS)}.")
    return MAPILLARY_LUTS[mapping]


@dataclass(frozen=True)
class LabelSpace:
    """A set of evaluation classes, given by their trainIds in the 19-class space."""

    name: str
    train_ids: tuple[int, ...]

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(CLASS_NAMES[i] for i in self.train_ids)

    @property
    def num_classes(self) -> int:
        return len(self.train_ids)


LABEL_SPACES: dict[str, LabelSpace] = {
    "cityscapes": LabelSpace("cityscapes", tuple(range(NUM_CLASSES))),
    "synthia16": LabelSpace("synthia16", SYNTHIA16_TRAIN_IDS),
}


def get_label_space(name: str) -> LabelSpace:
    """The label space called `name`, or a PparError listing the known ones."""
    if name not in LABEL_SPACES:
        raise PparError(f"Unknown label space {name!r}: use one of {', '.join(LABEL_SPACES)}.")
    return LABEL_SPACES[name]


def colorize(labels: np.ndarray) -> np.ndarray:
    """Colour a trainId map: labels (H,W) uint8 -> (H,W,3) uint8 RGB; ignore (and unknown ids) are black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[:NUM_CLASSES] = PALETTE
    return lut[labels]
