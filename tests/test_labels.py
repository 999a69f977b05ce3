"""The label tables of ppar_core.labels against cityscapesscripts' official table and the reference tables."""

from __future__ import annotations

import numpy as np
import pytest

from ppar_core import labels
from ppar_core.errors import PparError

cs_labels = pytest.importorskip("cityscapesscripts.helpers.labels")


def _official_train_id(label_id: int) -> int:
    train_id = cs_labels.id2label[label_id].trainId
    return 255 if train_id in (-1, 255) else train_id  # -1 (license plate) is ignored too


def test_labelid_to_trainid_matches_cityscapesscripts_for_every_labelid() -> None:
    for label_id in range(34):
        assert labels.LABELID_TO_TRAINID[label_id] == _official_train_id(label_id), label_id
    # labelId -1 (license plate) is stored as 255 in uint8 label images; it must be ignored
    assert labels.LABELID_TO_TRAINID[np.uint8(-1 & 0xFF)] == _official_train_id(-1) == 255
    # everything above 33 is undefined and ignored
    assert (labels.LABELID_TO_TRAINID[34:] == 255).all()


def test_classes_match_cityscapesscripts_names_colours_and_ids() -> None:
    official = {lab.trainId: lab for lab in cs_labels.labels if 0 <= lab.trainId < 255}
    assert len(official) == labels.NUM_CLASSES == 19
    for cls in labels.CITYSCAPES_CLASSES:
        ref = official[cls.train_id]
        assert (cls.name, cls.label_id, cls.color) == (ref.name, ref.id, tuple(ref.color))
        assert tuple(labels.PALETTE[cls.train_id]) == tuple(ref.color)
        assert labels.TRAINID_TO_LABELID[cls.train_id] == ref.id


def test_trainid_to_labelid_round_trip() -> None:
    train_ids = np.arange(19, dtype=np.uint8)
    assert (labels.LABELID_TO_TRAINID[labels.TRAINID_TO_LABELID[train_ids]] == train_ids).all()


def test_synthia_table_spot_checks_and_unlisted_ids() -> None:
    expected = {
        3: 0,
        4: 1,
        2: 2,
        21: 3,
        5: 4,
        7: 5,
        15: 6,
        9: 7,
        6: 8,
        16: 9,
        1: 10,
        10: 11,
        17: 12,
        8: 13,
        18: 14,
        19: 15,
        20: 16,
        12: 17,
        11: 18,
    }
    lut = labels.SYNTHIA_ID_TO_TRAINID
    assert lut.shape == (65536,)
    for src, dst in expected.items():
        assert lut[src] == dst
    for unlisted in (0, 13, 14, 22, 23, 255, 1000, 65535):
        assert lut[unlisted] == 255
    assert tuple(i for i in range(19) if i not in (9, 14, 16)) == labels.SYNTHIA16_TRAIN_IDS


@pytest.mark.parametrize(
    ("class_id", "name", "id_map", "name_map"),
    [
        (13, "Road", 0, 0),
        (7, "Bike Lane", 255, 0),
        (9, "Curb Cut", 255, 1),
        (41, "Manhole", 0, 255),
        (44, "Street Light", 255, 5),
        (46, "Traffic Sign Frame", 255, 7),
        (50, "Traffic Sign (Front)", 7, 7),
        (58, "On Rails", 16, 16),
        (61, "Truck", 14, 14),
        (0, "Bird", 255, 255),
        (65, "Unlabeled", 255, 255),
    ],
)
def test_mapillary_maps_spot_checks(class_id: int, name: str, id_map: int, name_map: int) -> None:
    assert labels.MAPILLARY_V12_NAMES[class_id] == name
    assert labels.mapillary_lut("id")[class_id] == id_map
    assert labels.mapillary_lut("name")[class_id] == name_map


def test_mapillary_maps_disagree_on_eleven_classes_and_unknown_map_fails() -> None:
    assert len(labels.MAPILLARY_V12_NAMES) == 66
    differ = np.flatnonzero(labels.mapillary_lut("id") != labels.mapillary_lut("name"))
    assert differ.tolist() == [7, 8, 9, 10, 11, 14, 23, 41, 44, 46, 49]
    with pytest.raises(PparError, match="id, name"):
        labels.mapillary_lut("rein")


def test_colorize_uses_palette_and_blacks_out_ignore() -> None:
    out = labels.colorize(np.array([[0, 13, 255]], dtype=np.uint8))
    assert out.tolist() == [[[128, 64, 128], [0, 0, 142], [0, 0, 0]]]
