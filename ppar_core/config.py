"""Typed training configuration: frozen dataclasses, strict loading, dotted overrides, presets as data.

A run is fully described by one `TrainConfig`. It is built from a preset, a TOML file and `--set a.b=value`
overrides, in that order; every step is type-checked, and an unknown key is an error that names it. The resolved
config is written to `config.json` in the run folder and into every checkpoint.

The sub-configs live beside the code they configure (`ModelConfig` with `build_segmentor`, `HeadConfig`, `VTPConfig`,
`LossConfig`, `TrainAugment`, `InferenceConfig`); this module only composes them.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import tomllib

from ppar_core.data.transforms import TrainAugment
from ppar_core.errors import PparError
from ppar_core.losses import LossConfig
from ppar_core.modeling.decode_head import HeadConfig
from ppar_core.modeling.segmentor import ModelConfig
from ppar_core.modeling.vtp import VTPConfig
from ppar_core.protocol import InferenceConfig

T = TypeVar("T")

# How several sources share a run's samples (ppar_core.engine.sampling implements them).
SAMPLING_RULES = ("balanced", "proportional")
LOGGERS = ("none", "tensorboard")  # where a run logs besides metrics.jsonl (ppar_core.engine.tensorboard)


@dataclass(frozen=True)
class DataConfig:
    source: tuple[str, ...] = ("gta5",)  # dataset specs, NAME or NAME=PATH; several train together ("gta5,synthia")
    source_sampling: str = "balanced"  # several sources: "balanced" (equal shares) or "proportional" (by size)
    targets: tuple[str, ...] = ("cityscapes", "bdd100k", "mapillary")
    data_root: str | None = None  # default: $PPAR_DATA
    source_split: str = "train"
    target_split: str = "val"
    mapillary_map: str = "id"  # "id" (RobustNet/HRDA) or "name" (Rein)
    skip_bad: bool = True  # training skips (and counts) unreadable or inconsistent source samples
    augment: TrainAugment = field(default_factory=TrainAugment)
    workers: int | None = None  # DataLoader worker processes; None = the usable cores minus one, at most 16
    eval_max_images: int | None = None  # evaluate on at most this many images per target (None = all)


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_iters: int = 1500  # linear warm-up from lr * warmup_ratio to lr
    warmup_ratio: float = 1e-6
    poly_power: float = 1.0  # poly decay after the warm-up
    min_lr: float = 0.0
    grad_clip: float | None = 1.0  # max global gradient norm; None disables clipping
    accum_steps: int = 1  # gradient accumulation: micro-batches per optimizer step


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: InferenceConfig = field(default_factory=InferenceConfig)
    iters: int = 20000  # optimizer steps
    batch_size: int = 8  # images per micro-batch per process
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    out: str = "runs/ppar"
    checkpoint_every: int = 1000  # steps between `last.safetensors` writes (also written at the end and on Ctrl-C)
    eval_every: int = 0  # steps between evaluations on the targets; 0 = only at the end
    log_every: int = 50  # steps between lines of metrics.jsonl
    log: str = "none"  # also log to: "none" or "tensorboard" (event files in <out>/tensorboard; the extra)

    def validate(self) -> TrainConfig:
        """Check every field and the cross-field constraints; returns self so it chains.

        Raises PparError naming the field (and the flag that sets it, where there is one), before anything is
        created on disk.
        """
        positive = {
            "iters": self.iters,
            "batch_size": self.batch_size,
            "log_every": self.log_every,
            "optim.accum_steps": self.optim.accum_steps,
        }
        for name, value in positive.items():
            if value < 1:
                raise PparError(f"Config field {name} must be at least 1, got {value}.")
        for name, value in {
            "checkpoint_every": self.checkpoint_every,
            "eval_every": self.eval_every,
            "optim.warmup_iters": self.optim.warmup_iters,
            "data.workers": self.data.workers or 0,
        }.items():
            if value < 0:
                raise PparError(f"Config field {name} must not be negative, got {value}.")
        if self.data.eval_max_images is not None and self.data.eval_max_images < 1:
            raise PparError(f"Config field data.eval_max_images must be at least 1, got {self.data.eval_max_images}.")
        if self.log not in LOGGERS:
            raise PparError(f"Config field log must be one of {', '.join(LOGGERS)}, got {self.log!r} (--log).")
        if not self.data.source:
            raise PparError("Config field data.source is empty: name at least one source dataset (--source gta5).")
        if self.data.source_sampling not in SAMPLING_RULES:
            rules = ", ".join(SAMPLING_RULES)
            raise PparError(
                f"Config field data.source_sampling must be one of {rules}, got {self.data.source_sampling!r}."
            )
        if self.optim.lr <= 0:
            raise PparError(f"Config field optim.lr must be positive, got {self.optim.lr}.")
        for sub in (self.model, self.data.augment, self.loss, self.eval):
            sub.validate()
        return self


# The data-only fields a resumed run may change without changing what it computes.
RESUMABLE_FIELDS = (
    "device",
    "out",
    "checkpoint_every",
    "eval_every",
    "log_every",
    "log",
    "data.workers",
    "data.data_root",
)


def check_resumable(saved: TrainConfig, asked: TrainConfig, *, run: str) -> None:
    """PparError naming every field where `asked` differs from the run's `saved` config (but the resumable ones),
    with the value the run has: a resumed run must compute what the uninterrupted one would."""
    changed = [k for k in config_diff(saved, asked) if k not in RESUMABLE_FIELDS]
    if changed:
        saved_dict = to_dict(saved)
        values = ", ".join(f"{k}={_dotted(saved_dict, k)!r}" for k in changed)
        raise PparError(
            f"Cannot resume {run} with other values for {', '.join(changed)}: the run has {values}. Drop those "
            "options (a resumed run keeps its own config), or start a new run with another --out."
        )


def _dotted(tree: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        tree = tree[part]
    return tree


# ----------------------------------------------------------------------------------------------------------------
# Strict, typed conversion between dicts and dataclasses


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp` and convert TOML/JSON shapes (lists -> tuples, int -> float)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except PparError:
                continue
        raise PparError(f"Config key {key!r} expects {_type_name(tp)}, got {value!r}.")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise PparError(f"Config key {key!r} expects a table of fields, got {value!r}.")
        return from_dict(tp, value, prefix=f"{key}.")
    if origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, str) and args and args[-1] is Ellipsis:
            value = [v.strip() for v in value.split(",") if v.strip()]  # "a,b" for tuple[str, ...]
        if not isinstance(value, list | tuple):
            raise PparError(f"Config key {key!r} expects a list, got {value!r}.")
        if args and args[-1] is Ellipsis:
            return tuple(_coerce(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise PparError(f"Config key {key!r} expects {len(args)} values, got {len(value)}.")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args, strict=True))
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Any:
        return value
    raise PparError(f"Config key {key!r} expects {_type_name(tp)}, got {value!r}.")


def from_dict(cls: type[T], data: dict[str, Any], *, prefix: str = "") -> T:
    """Build dataclass `cls` from a nested dict; unknown keys and wrong types raise PparError naming the key."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in data:
        if key not in names:
            raise PparError(f"Unknown config key {prefix + key!r}; known keys here: {', '.join(sorted(names))}.")
    kwargs = {key: _coerce(value, hints[key], prefix + key) for key, value in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain JSON-able data (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def merge(cfg: T, data: dict[str, Any]) -> T:
    """A copy of `cfg` with the (possibly nested, possibly partial) fields of `data` replaced, type-checked."""
    full = to_dict(cfg)

    def deep_update(base: dict[str, Any], new: dict[str, Any]) -> None:
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                deep_update(base[key], value)
            else:
                base[key] = value

    deep_update(full, data)
    return from_dict(type(cfg), full)


def parse_hxw(text: str) -> tuple[int, int] | None:
    """'720x1280' -> (720, 1280): height x width, two positive integers joined by x (spaces and X allowed); None for
    anything else. The one grammar of every option that takes a size; each caller words its own error."""
    match = re.fullmatch(r"\s*([0-9]+)\s*[xX]\s*([0-9]+)\s*", text)
    if match is None or min(int(match[1]), int(match[2])) < 1:
        return None
    return int(match[1]), int(match[2])


def _parse_value(text: str) -> Any:
    """An override value: TOML syntax when it parses (numbers, booleans, lists, quoted strings), else a bare string."""
    if text in ("none", "None", "null"):
        return None
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """tree["a"]["b"] = value for key "a.b", creating the intermediate tables."""
    *parents, leaf = key.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


def apply_overrides(cfg: T, overrides: list[str]) -> T:
    """Apply `a.b=value` overrides (type-checked against the field they set)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise PparError(f"Override {item!r} is not of the form key=value (e.g. optim.lr=1e-4).")
        nested: dict[str, Any] = {}
        _set_dotted(nested, key.strip(), _parse_value(raw.strip()))
        cfg = merge(cfg, nested)
    return cfg


def load_toml(path: Path, *, base: T) -> T:
    """Read a TOML config file over `base` (keys absent from the file keep base's values)."""
    path = Path(path)
    if not path.is_file():
        raise PparError(f"Config file {path} does not exist.")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PparError(f"Config file {path} is not valid TOML ({exc}).") from exc
    preset = data.pop("preset", None)
    if preset is not None:
        base = get_train_preset(preset)  # type: ignore[assignment]
    try:
        return merge(base, data)
    except PparError as exc:
        raise PparError(f"{path}: {exc}") from exc


def config_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted names of the fields where two configs differ."""
    da, db = (to_dict(a), to_dict(b)) if not isinstance(a, dict) else (a, b)
    out: list[str] = []
    for key in sorted(set(da) | set(db)):
        va, vb = da.get(key), db.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_diff(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(prefix + key)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Presets (plain data). examples/*.toml spell the same presets out as files; a test keeps them equal.

# The paper-style protocol: GTA5 -> Cityscapes, BDD100K, Mapillary with CLIP ViT-B/16.
_GTA5_VIT_B16 = TrainConfig(
    model=ModelConfig(preset="vit-b16", pretrained="openai", quick_gelu=True),
    data=DataConfig(
        source=("gta5",),
        targets=("cityscapes", "bdd100k", "mapillary"),
        augment=TrainAugment(resize=(720, 1280), scale_range=(0.5, 2.0), crop_size=(512, 512)),
    ),
    eval=InferenceConfig(mode="slide", crop_size=512, stride=341),
    iters=20000,
    batch_size=8,
    out="runs/gta5-vit-b16",
)

TRAIN_PRESETS: dict[str, TrainConfig] = {
    "gta5-vit-b16": _GTA5_VIT_B16,
    # Multi-source DG (as Rein and SoMA report it): GTA5 + SYNTHIA, equal shares of every batch, the same targets.
    # SYNTHIA labels 16 classes: its images' loss leaves out the other 3 (terrain, truck, train).
    "gta5+synthia-vit-b16": replace(
        _GTA5_VIT_B16,
        data=replace(_GTA5_VIT_B16.data, source=("gta5", "synthia"), source_sampling="balanced"),
        out="runs/gta5+synthia-vit-b16",
    ),
    # The CPU demo: the tiny tower on the built-in synthetic domains, a few minutes on two cores. Random weights by
    # default; `ppar demo` passes the embedded prior (model.pretrained = its file, `ppar pretrain`).
    "synth-tiny": TrainConfig(
        model=ModelConfig(
            preset="tiny",
            backbone_lr_mult=0.03,  # the prior is fine-tuned gently (docs/METHOD.md, "The embedded prior")
            head=HeadConfig(fpn_channels=64),
            vtp=VTPConfig(decoder_width=64, decoder_layers=2),
        ),
        data=DataConfig(
            source=("synth-source",),
            targets=("synth-real", "synth-night", "synth-fog"),
            augment=TrainAugment(resize=None, scale_range=(0.75, 1.5), crop_size=(128, 256)),
            eval_max_images=40,
        ),
        optim=OptimConfig(lr=1e-3, warmup_iters=30),
        eval=InferenceConfig(mode="whole", crop_size=256, stride=171, batch_size=4),
        iters=300,
        batch_size=8,
        checkpoint_every=100,
        log_every=10,
        out="runs/synth-tiny",
    ),
}


def get_train_preset(name: str) -> TrainConfig:
    if name not in TRAIN_PRESETS:
        raise PparError(f"Unknown training preset {name!r}: use one of {', '.join(TRAIN_PRESETS)}.")
    return TRAIN_PRESETS[name]


def resolve_config(
    *,
    preset: str | None = None,
    config_file: Path | None = None,
    fields: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
    base: TrainConfig | None = None,
) -> TrainConfig:
    """preset (or `base`, or the defaults) < TOML file < `fields` (dotted name -> value; None = not given) < `--set`
    overrides; validated."""
    cfg = get_train_preset(preset) if preset else (base or TrainConfig())
    if config_file is not None:
        cfg = load_toml(config_file, base=cfg)
    nested: dict[str, Any] = {}
    for name, value in (fields or {}).items():
        if value is not None:
            _set_dotted(nested, name, value)
    cfg = merge(cfg, nested)
    return apply_overrides(cfg, overrides or []).validate()
