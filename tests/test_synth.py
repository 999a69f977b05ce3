"""The built-in synthetic domains: determinism, class coverage, layout/appearance separation, files and styles."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from ppar_core.data.synth import (
    BUILTIN_STYLES,
    DEFAULT_DOMAINS,
    SKY_DEPTH,
    Style,
    generate_layout,
    load_style_file,
    make_sample,
    render,
    write_domains,
)
from ppar_core.errors import PparError
from ppar_core.labels import CLASS_NAMES, NUM_CLASSES

SMALL = (64, 128)


def _labels(domain: str, n: int, *, size: tuple[int, int] = SMALL, seed: int = 0) -> np.ndarray:
    return np.stack([make_sample(domain, i, size=size, seed=seed)[1] for i in range(n)])


def test_same_inputs_give_byte_identical_samples_and_other_seeds_differ() -> None:
    a_img, a_lab = make_sample("synth-real", 3, size=SMALL, seed=7)
    b_img, b_lab = make_sample("synth-real", 3, size=SMALL, seed=7)
    assert a_img.dtype == np.uint8 and a_img.shape == (*SMALL, 3) and a_lab.shape == SMALL
    assert a_img.tobytes() == b_img.tobytes() and a_lab.tobytes() == b_lab.tobytes()
    c_img, c_lab = make_sample("synth-real", 3, size=SMALL, seed=8)
    assert not np.array_equal(a_lab, c_lab) and not np.array_equal(a_img, c_img)
    assert not np.array_equal(a_lab, make_sample("synth-real", 4, size=SMALL, seed=7)[1])


def test_all_19_classes_occur_in_20_small_images_and_labels_are_train_ids() -> None:
    labels = _labels("synth-source", 20)
    present = set(np.unique(labels).tolist())
    missing = [CLASS_NAMES[k] for k in range(NUM_CLASSES) if k not in present]
    assert not missing, f"classes never drawn: {missing}"
    assert present <= set(range(NUM_CLASSES)) | {255}


def test_each_domain_draws_its_own_layouts_from_the_same_distribution() -> None:
    """Per-class pixel frequencies over 24 images agree between domains within a 4-sigma two-sample bound.

    Each domain's 24 images are independent layout draws, so a class frequency is a mean of 24 per-image values;
    the difference of two such means has standard error sqrt(var_a/24 + var_b/24) (estimated from the data). With
    19 classes and 3 domain pairs, 4 sigma keeps false alarms below about 1e-3, while a real change of the layout
    distribution (say one domain without cars) shifts a frequency by many sigma.
    """
    n = 24
    freqs = {}
    for domain in ("synth-source", "synth-night", "synth-fog"):
        labels = _labels(domain, n)
        per_image = np.stack([np.bincount(x.ravel(), minlength=256)[:NUM_CLASSES] / x.size for x in labels])
        freqs[domain] = per_image
    src = freqs["synth-source"]
    for domain in ("synth-night", "synth-fog"):
        other = freqs[domain]
        sigma = np.sqrt(src.var(0, ddof=1) / n + other.var(0, ddof=1) / n)
        diff = np.abs(src.mean(0) - other.mean(0))
        assert np.all(diff <= 4 * sigma + 2e-3), {CLASS_NAMES[k]: float(diff[k]) for k in np.argsort(-diff / sigma)[:3]}
    # Same index and seed in two domains: a different scene (layouts are never shared), not the same one restyled.
    assert not np.array_equal(
        make_sample("synth-source", 0, size=SMALL)[1], make_sample("synth-night", 0, size=SMALL)[1]
    )


def _stats(domain: str) -> tuple[float, float, float]:
    """(mean brightness, mean HSV saturation, mean |Laplacian|) over 4 images of 128x256, all in 0-255 units."""
    bright, sat, hf = [], [], []
    for i in range(4):
        img = make_sample(domain, i, size=(128, 256))[0]
        grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        bright.append(grey.mean())
        sat.append(cv2.cvtColor(img, cv2.COLOR_RGB2HSV)[..., 1].mean())
        hf.append(np.abs(cv2.Laplacian(grey.astype(np.float32), cv2.CV_32F)).mean())
    return float(np.mean(bright)), float(np.mean(sat)), float(np.mean(hf))


def test_domains_differ_in_appearance_by_clear_margins() -> None:
    src_b, src_s, src_hf = _stats("synth-source")
    real_b, real_s, _ = _stats("synth-real")
    night_b, _, _ = _stats("synth-night")
    fog_b, fog_s, fog_hf = _stats("synth-fog")
    assert night_b < 0.4 * src_b  # night is dark
    assert fog_s < 0.6 * src_s and real_s < 0.75 * src_s  # fog and the camera look are muted
    assert fog_hf < 0.6 * src_hf  # haze and blur remove fine detail
    assert fog_b > src_b * 0.9  # fog is bright, not dark


def test_layout_maps_agree_and_flat_render_is_constant_per_part() -> None:
    layout = generate_layout(np.random.default_rng(5), (96, 192))
    assert layout.size == (96, 192)
    assert np.array_equal(layout.labels, layout.part_labels[layout.parts])  # labels come from the drawn parts
    assert layout.depth.dtype == np.float32 and np.all(layout.depth > 0) and np.all(layout.depth <= SKY_DEPTH)
    assert np.all(layout.depth[layout.parts == 0] == SKY_DEPTH)
    road = layout.labels == CLASS_NAMES.index("road")
    rows = np.flatnonzero(road.any(1))
    road_depth = np.array([layout.depth[r][road[r]].mean() for r in rows])
    assert np.all(np.diff(road_depth) < 0)  # the road is farther up the image, nearer at the bottom
    # Without texture, lighting, optics or sensor effects, every non-sky part renders as one flat colour: image
    # edges can only occur where parts (hence labels) change.
    flat = Style(sun=0.0, texture=0.0)
    image = render(layout, flat, np.random.default_rng(0)).reshape(-1, 3)
    parts = layout.parts.ravel()
    for pid in np.unique(parts[parts > 0]):
        colors = image[parts == pid]
        assert np.all(colors == colors[0]), f"part {pid} is not flat"


def test_render_keeps_the_layout_and_appearance_varies_with_its_own_stream() -> None:
    layout = generate_layout(np.random.default_rng(1), SMALL)
    style = BUILTIN_STYLES["synth-real"]
    a = render(layout, style, np.random.default_rng(0))
    b = render(layout, style, np.random.default_rng(1))
    assert not np.array_equal(a, b)  # noise and textures differ
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 12  # but it is the same scene


def test_write_domains_layout_names_style_json_and_round_trip(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    folders = write_domains(
        tmp_path,
        domains=("synth-source", "synth-fog"),
        num=3,
        size=(32, 64),
        seed=4,
        progress=lambda _task, done, total: calls.append((done, total)),
    )
    assert folders == {d: tmp_path / d for d in ("synth-source", "synth-fog")}
    assert calls == [(i, 6) for i in range(1, 7)]
    for domain, folder in folders.items():
        names = [f"{domain}_{i:05d}.png" for i in range(3)]
        assert sorted(p.name for p in (folder / "images").iterdir()) == names  # no temporary files left
        assert sorted(p.name for p in (folder / "labels").iterdir()) == names
        meta = json.loads((folder / "style.json").read_text())
        assert meta["domain"] == domain and meta["seed"] == 4 and meta["size"] == [32, 64] and meta["num"] == 3
        assert Style.from_dict(meta["style"]) == BUILTIN_STYLES[domain]
        image, labels = make_sample(domain, 2, size=(32, 64), seed=4)
        read_img = cv2.imread(str(folder / "images" / names[2]), cv2.IMREAD_UNCHANGED)
        read_lab = cv2.imread(str(folder / "labels" / names[2]), cv2.IMREAD_UNCHANGED)
        assert read_lab.dtype == np.uint8 and read_lab.ndim == 2 and np.array_equal(read_lab, labels)
        assert np.array_equal(read_img[..., ::-1], image)  # stored as an RGB PNG (OpenCV reads BGR)


def test_unknown_domain_and_bad_size_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(PparError, match="synth-source.*synth-fog"):
        write_domains(tmp_path, domains=("synth-snow",), num=1)
    with pytest.raises(PparError, match="synth-snow"):
        make_sample("synth-snow", 0)
    with pytest.raises(PparError, match="size"):
        make_sample("synth-source", 0, size=(8, 8))
    assert not (tmp_path / "synth-snow").exists()


def test_a_failed_write_is_a_user_error_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    images = tmp_path / "synth-fog" / "images"
    (images / "synth-fog_00000.png").mkdir(parents=True)  # a folder where the PNG should go: the rename fails
    (tmp_path / "synth-fog" / "style.json").write_text("{}")  # an earlier domain, replaced
    with pytest.raises(PparError, match="Cannot write .*synth-fog_00000.png"):
        write_domains(tmp_path, domains=("synth-fog",), num=1, size=(32, 64), replace=True)
    assert [p.name for p in images.iterdir()] == ["synth-fog_00000.png"]


def test_style_dict_round_trip_and_strictness() -> None:
    for style in BUILTIN_STYLES.values():
        assert Style.from_dict(json.loads(json.dumps(style.to_dict()))) == style
    assert set(BUILTIN_STYLES) == set(DEFAULT_DOMAINS)
    with pytest.raises(PparError, match="'brightnes'"):
        Style.from_dict({"brightnes": 1.0})
    with pytest.raises(PparError, match="jpeg_quality"):
        Style.from_dict({"jpeg_quality": 150})
    with pytest.raises(PparError, match="haze_color"):
        Style.from_dict({"haze_color": [1, 2]})
    assert Style.from_dict({"jpeg_quality": None, "haze_color": [0.1, 0.2, 0.3]}).haze_color == (0.1, 0.2, 0.3)


def test_style_file_with_base_and_both_shapes(tmp_path: Path) -> None:
    one = tmp_path / "dusk.json"
    one.write_text(json.dumps({"name": "synth-dusk", "base": "synth-night", "ambient": 0.3}))
    assert load_style_file(one) == {"synth-dusk": replace(BUILTIN_STYLES["synth-night"], ambient=0.3)}
    many = tmp_path / "many.json"
    many.write_text(json.dumps({"styles": {"synth-a": {"saturation": 2.0}, "synth-b": {"base": "synth-fog"}}}))
    styles = load_style_file(many)
    assert styles == {"synth-a": Style(saturation=2.0), "synth-b": BUILTIN_STYLES["synth-fog"]}
    img, lab = make_sample("synth-a", 0, size=SMALL, styles=styles)  # a file style is a usable domain
    assert img.shape == (*SMALL, 3) and lab.shape == SMALL


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ({"name": "synth-x", "base": "synth-real", "contrastt": 1}, "'contrastt'"),
        ({"name": "dusk", "ambient": 0.3}, "must start with 'synth-'"),
        ({"name": "synth-x", "base": "synth-moon"}, "unknown base 'synth-moon'"),
        ({"ambient": 0.3}, "neither a 'name' nor a 'styles'"),
        ({"name": "synth-x", "ambient": "dark"}, "'ambient'"),
        ("{not json", "not valid JSON"),
    ],
)
def test_bad_style_file_names_the_file_and_the_problem(tmp_path: Path, content: object, match: str) -> None:
    path = tmp_path / "bad_style.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(PparError, match=match) as info:
        load_style_file(path)
    assert "bad_style.json" in str(info.value)
    with pytest.raises(PparError, match="does not exist"):
        load_style_file(tmp_path / "missing.json")


@pytest.mark.slow
def test_two_hundred_full_size_images_are_written(tmp_path: Path) -> None:
    # How fast this goes is measured by bench/synth_speed.py, not asserted here: a shared machine's timing is noise.
    folders = write_domains(tmp_path, num=50, size=(256, 512))
    assert set(folders) == set(DEFAULT_DOMAINS)
    for domain, folder in folders.items():
        names = [f"{domain}_{i:05d}.png" for i in range(50)]
        assert sorted(p.name for p in (folder / "images").iterdir()) == names
        assert sorted(p.name for p in (folder / "labels").iterdir()) == names
