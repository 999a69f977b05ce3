"""Inference: sliding windows vs whole image, overlap averaging, TTA, odd sizes, test scale, CPU accumulation."""

from __future__ import annotations

import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ppar_core.errors import PparError
from ppar_core.inference import infer_logits, predict_labels
from ppar_core.protocol import InferenceConfig, window_boxes, window_starts

K = 4


def pointwise_model(seed: int = 0) -> nn.Module:
    """A 1x1 convolution: position-independent, so padding and window borders cannot change its output."""
    torch.manual_seed(seed)
    return nn.Conv2d(3, K, kernel_size=1).eval()


def conv_model(seed: int = 0) -> nn.Module:
    """Two 3x3 convolutions with zero padding: receptive-field radius 2, so window borders matter within 2 px."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, K, 3, padding=1)).eval()


def random_image(h: int, w: int, seed: int = 0) -> Tensor:
    return torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_window_boxes_are_the_grid_of_both_axes_row_by_row() -> None:
    # 600 rows: starts 0 and 88 (the last shifted back to the border); 1000 columns: 0, 341 and 488.
    assert window_boxes(600, 1000, 512, 341) == [(0, 0), (0, 341), (0, 488), (88, 0), (88, 341), (88, 488)]
    assert window_boxes(300, 400, 512, 341) == [(0, 0)]  # smaller than the crop: one window


def test_window_starts_cover_the_axis() -> None:
    assert window_starts(300, 512, 341) == [0]  # shorter than the crop: one window
    assert window_starts(512, 512, 341) == [0]
    assert window_starts(1024, 512, 341) == [0, 341, 512]  # last window shifted back to end at the border
    assert window_starts(2048, 512, 341) == [0, 341, 682, 1023, 1364, 1536]
    for length, crop, stride in [(1000, 256, 171), (257, 256, 200), (900, 256, 256)]:
        starts = window_starts(length, crop, stride)
        covered = torch.zeros(length, dtype=torch.bool)
        for s in starts:
            assert s >= 0 and s + crop <= length
            covered[s : s + crop] = True
        assert bool(covered.all())


def test_slide_equals_whole_when_the_crop_covers_the_image() -> None:
    image = random_image(37, 53)
    for model in (pointwise_model(), conv_model()):
        whole = infer_logits(model, image, InferenceConfig(mode="whole"), num_classes=K)
        slide = infer_logits(model, image, InferenceConfig(mode="slide", crop_size=64, stride=32), num_classes=K)
        # One window = the whole image, padded the same way: bit-identical.
        assert torch.equal(slide, whole)


def test_pointwise_model_slide_equals_whole_with_many_windows() -> None:
    image = random_image(70, 90)
    model = pointwise_model()
    whole = infer_logits(model, image, InferenceConfig(mode="whole", size_divisor=1), num_classes=K)
    slide = infer_logits(model, image, InferenceConfig(crop_size=32, stride=20, batch_size=3), num_classes=K)
    # Windows are padded 32 -> 32 (no-op) and the average of identical values is that value (up to rounding).
    assert torch.allclose(slide, whole, atol=1e-6)
    reference = model(image)
    assert torch.allclose(whole, reference, atol=1e-6)


def test_conv_model_slide_agrees_with_whole_away_from_window_borders() -> None:
    """The precise claim: with no size padding (size_divisor 1), a window's output at pixel p equals the whole-image
    output when p is at least r = 2 pixels (the receptive-field radius) from every window edge that lies INSIDE the
    image (edges on the image border see the same zero padding in both). Slide output = mean over the windows
    containing p, so it equals the whole output wherever that holds for every such window; elsewhere it differs."""
    h, w, crop, stride, r = 40, 50, 24, 16, 2
    image = random_image(h, w, seed=1)
    model = conv_model(seed=1)
    whole = infer_logits(model, image, InferenceConfig(mode="whole", size_divisor=1), num_classes=K)
    slide = infer_logits(model, image, InferenceConfig(crop_size=crop, stride=stride, size_divisor=1), num_classes=K)

    def safe_axis(length: int) -> Tensor:
        ok = torch.ones(length, dtype=torch.bool)
        idx = torch.arange(length)
        for s in window_starts(length, crop, stride):
            inside = (idx >= s) & (idx < s + crop)
            near = torch.zeros(length, dtype=torch.bool)
            if s > 0:  # the window's start edge is inside the image
                near |= idx < s + r
            if s + crop < length:  # its end edge is inside the image
                near |= idx >= s + crop - r
            ok &= ~(inside & near)
        return ok

    safe = safe_axis(h)[:, None] & safe_axis(w)[None, :]
    assert safe.float().mean() > 0.3  # the claim is tested on a good share of the image
    diff = (slide - whole).abs().amax(dim=1)[0]
    assert float(diff[safe].max()) < 1e-5
    assert float(diff[~safe].max()) > 1e-3  # and the claim is tight: the unsafe band does differ


class WindowOffsetModel:
    """Returns, for each window, a constant map: 100 * (window's top offset) + (window's left offset).

    The image carries its own pixel coordinates in channels 0 (x) and 1 (y), so a window's minimum of each
    channel is its offset; the result does not depend on the order windows are visited or batched."""

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []

    def __call__(self, batch: Tensor) -> Tensor:
        self.batch_sizes.append(batch.shape[0])
        x0 = batch[:, 0].amin(dim=(1, 2))
        y0 = batch[:, 1].amin(dim=(1, 2))
        value = (100 * y0 + x0).view(-1, 1, 1, 1)
        return value.expand(-1, 2, batch.shape[2], batch.shape[3]).clone()


def coordinate_image(h: int, w: int) -> Tensor:
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return torch.stack([xs, ys, torch.zeros_like(xs)])[None]


def test_overlapping_windows_are_averaged_by_the_count_map() -> None:
    # 10x12 image, crop 8, stride 2 horizontally gives x offsets 0, 2, 4; vertically 10 -> offsets 0, 2.
    model = WindowOffsetModel()
    cfg = InferenceConfig(crop_size=8, stride=2, batch_size=4, size_divisor=8)
    out = infer_logits(model, coordinate_image(10, 12), cfg, num_classes=2)
    # Hand-computed mean of the x offsets of the windows covering each column:
    # cols 0-1: {0}; 2-3: {0,2}; 4-7: {0,2,4}; 8-9: {2,4}; 10-11: {4}.
    x_mean = torch.tensor([0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 4, 4], dtype=torch.float32)
    # rows 0-1: {0}; rows 2-7: {0,2}; rows 8-9: {2}. y offsets 0, 2 from window_starts(10, 8, 2).
    y_mean = torch.tensor([0, 0, 1, 1, 1, 1, 1, 1, 2, 2], dtype=torch.float32)
    expected = 100 * y_mean[:, None] + x_mean[None, :]
    assert out.shape == (1, 2, 10, 12)
    assert torch.allclose(out[0, 0], expected) and torch.allclose(out[0, 1], expected)
    # 2 x 3 = 6 windows in batches of at most 4.
    assert model.batch_sizes == [4, 2]


def test_flip_tta_of_a_flip_equivariant_model_equals_no_tta() -> None:
    image = random_image(37, 53, seed=2)
    model = pointwise_model(seed=2)
    for mode in ("whole", "slide"):
        plain = infer_logits(model, image, InferenceConfig(mode=mode, crop_size=32, stride=20), num_classes=K)
        flip = infer_logits(
            model, image, InferenceConfig(mode=mode, crop_size=32, stride=20, tta="flip"), num_classes=K
        )
        assert torch.allclose(flip, plain.softmax(dim=1), atol=1e-6)
        assert torch.allclose(flip.sum(dim=1), torch.ones(1, 37, 53), atol=1e-5)


def test_flip_tta_averages_the_flipped_view_for_a_non_symmetric_model() -> None:
    image = random_image(16, 24, seed=3)
    torch.manual_seed(3)
    model = nn.Conv2d(3, K, kernel_size=(1, 3), padding=(0, 1)).eval()  # sees left/right neighbours differently
    cfg = InferenceConfig(mode="whole", tta="flip", size_divisor=8)
    got = infer_logits(model, image, cfg, num_classes=K)
    with torch.no_grad():
        expected = (model(image).softmax(1) + model(image.flip(-1)).softmax(1).flip(-1)) / 2
        assert not torch.allclose(expected, model(image).softmax(1), atol=1e-3)  # flip really changes something
    assert torch.allclose(got, expected, atol=1e-6)


def test_ms_flip_with_a_single_unit_scale_equals_flip() -> None:
    image = random_image(20, 30, seed=4)
    model = conv_model(seed=4)
    flip = infer_logits(model, image, InferenceConfig(mode="whole", tta="flip"), num_classes=K)
    ms = infer_logits(model, image, InferenceConfig(mode="whole", tta="ms-flip", ms_scales=(1.0,)), num_classes=K)
    assert torch.equal(ms, flip)


def test_ms_flip_resizes_each_scale_back_and_averages_probabilities() -> None:
    image = random_image(20, 30, seed=5)
    model = pointwise_model(seed=5)
    cfg = InferenceConfig(mode="whole", tta="ms-flip", ms_scales=(0.5, 2.0), size_divisor=1)
    got = infer_logits(model, image, cfg, num_classes=K)
    with torch.no_grad():
        views = []
        for size in ((10, 15), (40, 60)):
            scaled = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
            for flip in (False, True):
                logits = model(scaled.flip(-1) if flip else scaled)
                logits = logits.flip(-1) if flip else logits
                views.append(F.interpolate(logits, size=(20, 30), mode="bilinear", align_corners=False).softmax(1))
        expected = torch.stack(views).mean(0)
    assert torch.allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_sizes_that_are_not_multiples_of_32_return_the_original_size(mode: str) -> None:
    shapes: list[tuple[int, ...]] = []

    def model_fn(batch: Tensor) -> Tensor:
        shapes.append(tuple(batch.shape))
        return torch.zeros(batch.shape[0], K, *batch.shape[2:])

    for h, w in [(37, 53), (1, 1), (33, 100)]:
        out = infer_logits(
            model_fn, random_image(h, w), InferenceConfig(mode=mode, crop_size=64, stride=48), num_classes=K
        )
        assert out.shape == (1, K, h, w) and out.dtype == torch.float32
        labels = predict_labels(
            model_fn, random_image(h, w), InferenceConfig(mode=mode, crop_size=64, stride=48), num_classes=K
        )
        assert labels.shape == (h, w) and labels.dtype == torch.uint8
    # The model only ever sees multiples of 32.
    assert all(s[2] % 32 == 0 and s[3] % 32 == 0 for s in shapes)


def test_pointwise_model_is_unchanged_by_size_padding() -> None:
    image = random_image(37, 53, seed=6)
    model = pointwise_model(seed=6)
    padded = infer_logits(model, image, InferenceConfig(mode="whole", size_divisor=32), num_classes=K)
    with torch.no_grad():
        assert torch.allclose(padded, model(image), atol=1e-6)


def test_long_side_and_scale_resize_the_input_and_return_the_original_size() -> None:
    seen: list[tuple[int, int]] = []

    def model_fn(batch: Tensor) -> Tensor:
        seen.append((batch.shape[2], batch.shape[3]))
        return batch[:, :1].repeat(1, K, 1, 1)

    image = random_image(37, 53)
    out = infer_logits(model_fn, image, InferenceConfig(mode="whole", long_side=106, size_divisor=1), num_classes=K)
    assert seen[-1] == (74, 106) and out.shape == (1, K, 37, 53)
    # long_side overrides scale.
    infer_logits(
        model_fn, image, InferenceConfig(mode="whole", long_side=106, scale=3.0, size_divisor=1), num_classes=K
    )
    assert seen[-1] == (74, 106)
    out = infer_logits(model_fn, image, InferenceConfig(mode="whole", scale=0.5, size_divisor=1), num_classes=K)
    assert seen[-1] == (19, 27) and out.shape == (1, K, 37, 53)  # 18.5 x 26.5 rounded half up
    # The returned scores are the scaled logits resized back bilinearly: the identity-like model gives back a
    # smoothed copy of channel 0, exact at scale 1.
    out = infer_logits(model_fn, image, InferenceConfig(mode="whole", size_divisor=1), num_classes=K)
    assert torch.equal(out[0, 0], image[0, 0])


def test_large_image_accumulates_on_cpu_with_batches_of_windows() -> None:
    image = random_image(600, 900, seed=7)
    model = pointwise_model(seed=7)
    max_batch = []

    def model_fn(batch: Tensor) -> Tensor:
        max_batch.append(batch.shape[0])
        assert batch.shape[2:] == (256, 256)  # only windows reach the model, never the whole image
        return model(batch)

    cfg = InferenceConfig(crop_size=256, stride=171, batch_size=2)
    out = infer_logits(model_fn, image, cfg, num_classes=K, accumulate_device=torch.device("cpu"))
    assert out.shape == (1, K, 600, 900) and out.device.type == "cpu"
    assert max(max_batch) <= 2 and sum(max_batch) == len(window_starts(600, 256, 171)) * len(
        window_starts(900, 256, 171)
    )
    with torch.no_grad():
        assert torch.allclose(out, model(image), atol=1e-5)
    assert not out.requires_grad


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_low_resolution_scores_are_upsampled_per_window_as_the_model_would(mode: str) -> None:
    # A segmentor returns scores at stride 4; infer_logits upsamples each window (padded size, then cropped) as it
    # accumulates. That must equal a model that upsamples its own output to the padded input size.
    conv = conv_model(seed=3)

    def strided(batch: Tensor) -> Tensor:
        return F.avg_pool2d(conv(batch), 4)

    def upsampled(batch: Tensor) -> Tensor:
        return F.interpolate(strided(batch), size=batch.shape[-2:], mode="bilinear", align_corners=False)

    image = random_image(70, 90, seed=3)  # not multiples of 32: windows and the whole image are padded
    cfg = InferenceConfig(mode=mode, crop_size=48, stride=30, batch_size=3)
    low = infer_logits(strided, image, cfg, num_classes=K)
    full = infer_logits(upsampled, image, cfg, num_classes=K)
    assert low.shape == (1, K, 70, 90)
    torch.testing.assert_close(low, full, atol=1e-6, rtol=0)


def test_flushing_window_scores_early_or_late_gives_the_same_sum(monkeypatch: pytest.MonkeyPatch) -> None:
    # Scores are held until PENDING_BYTES and then added to the full-resolution sum; when that happens (after every
    # batch, or once at the end) must not change the result.
    import ppar_core.inference as inference

    conv = conv_model(seed=4)

    def strided(batch: Tensor) -> Tensor:
        return F.avg_pool2d(conv(batch), 4)

    image = random_image(100, 130, seed=4)
    cfg = InferenceConfig(crop_size=64, stride=40, batch_size=2)
    late = infer_logits(strided, image, cfg, num_classes=K)
    monkeypatch.setattr(inference, "PENDING_BYTES", 1)
    early = infer_logits(strided, image, cfg, num_classes=K)
    torch.testing.assert_close(early, late, atol=0, rtol=0)


class FullResolutionTracker(TorchDispatchMode):
    """Keeps a weak reference to every K-channel tensor of the image's full size that an op creates, so that a model
    can count how many such score maps are alive while it runs."""

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = size
        self.live: dict[int, weakref.ref[Tensor]] = {}  # id -> weak reference, dropped when the tensor is freed

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, Tensor) and t.dim() == 4 and t.shape[1] == K and tuple(t.shape[-2:]) == self.size:
                key = id(t)
                self.live[key] = weakref.ref(t, lambda _ref, key=key: self.live.pop(key, None))
        return out


def test_low_resolution_scores_wait_for_the_model_full_resolution_ones_do_not() -> None:
    # When the model runs, how many full-resolution score maps are alive: none for stride-4 scores (they wait until
    # every window was seen, so the model's peak and the full-size sum never coincide), and for full-size scores only
    # the running sum (added after every batch, one window at a time).
    tracker = FullResolutionTracker((100, 130))
    conv = conv_model(seed=5)
    alive: list[int] = []

    def strided(batch: Tensor) -> Tensor:
        alive.append(len(tracker.live))
        return F.avg_pool2d(conv(batch), 4)

    def full(batch: Tensor) -> Tensor:
        alive.append(len(tracker.live))
        return conv(batch)

    cfg = InferenceConfig(crop_size=64, stride=40, batch_size=2)  # 100x130: 2x3 windows, 3 batches
    with tracker:
        infer_logits(strided, random_image(100, 130), cfg, num_classes=K)
    assert alive == [0, 0, 0]
    alive.clear()
    with tracker:
        infer_logits(full, random_image(100, 130), cfg, num_classes=K)
    assert alive == [0, 1, 1]  # the sum exists from the first batch on, and nothing else of its size


def test_model_returning_the_wrong_number_of_classes_is_a_clear_error() -> None:
    with pytest.raises(PparError, match="number of classes"):
        infer_logits(pointwise_model(), random_image(8, 8), InferenceConfig(mode="whole"), num_classes=K + 1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "tiles"}, "mode"),
        ({"tta": "rotate"}, "augmentation"),
        ({"crop_size": 256, "stride": 300}, "stride"),
        ({"scale": 0.0}, "scale"),
        ({"long_side": 0}, "Long side"),
        ({"ms_scales": ()}, "Multi-scale"),
        ({"batch_size": 0}, "batch size"),
        ({"size_divisor": 0}, "divisor"),
    ],
)
def test_validate_names_the_bad_option(kwargs: dict, match: str) -> None:
    with pytest.raises(PparError, match=match):
        InferenceConfig(**kwargs).validate()
    assert InferenceConfig().validate() == InferenceConfig()
