"""Checkpoint files: one self-contained `.safetensors` per model, a sibling `.state.safetensors` for resuming.

A model checkpoint holds tensors (weights, prototypes, reliability statistics) and, in the safetensors metadata
(a flat `dict[str, str]`): `format_version`, `kind` ("model"), `config` (the resolved config as JSON), `step`,
`ppar_version`, plus any extra JSON-encoded fields. A training state (kind "train_state") holds the optimizer state
flattened into tensors, caller tensors (RNG, statistics) and JSON metadata, so that `--resume` continues bit-exactly.

Only safetensors is ever read: no pickle, so a checkpoint from a stranger cannot run code. Writes go through
`files.atomic_write`, so a crash mid-save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import Tensor, nn

from ppar_core.errors import PparError
from ppar_core.files import atomic_write
from ppar_core.version import __version__

CHECKPOINT_FORMAT_VERSION = 1

KIND_MODEL = "model"
KIND_TRAIN_STATE = "train_state"
CHECKPOINT_FILE = "last.safetensors"  # the model checkpoint of a training run, in its folder

# Metadata keys written as plain strings; everything else in the metadata is JSON.
_RESERVED = ("format_version", "kind", "config", "step", "ppar_version")
_OPTIM_PREFIX = "optim.state."
_GROUP_PREFIX = "optim.group."
_EXTRA_PREFIX = "extra."
_NAMES_SHOWN = 5


@dataclass
class Checkpoint:
    """A loaded model checkpoint.

    tensors: every stored tensor by name, on the requested device, dtypes as saved. config: the resolved config
    (a plain dict, for `config.py` to validate). meta: `format_version`, `kind`, `ppar_version` and every extra field
    passed to `save_checkpoint`, decoded from JSON.
    """

    path: Path
    tensors: dict[str, Tensor]
    config: dict[str, Any]
    step: int
    meta: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(
    path: Path,
    *,
    tensors: dict[str, Tensor],
    config: dict[str, Any],
    step: int,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write a model checkpoint atomically.

    tensors: any dtypes/devices; they are saved contiguous, on the CPU, detached. config and extra must be
    JSON-able; extra keys must not clash with the reserved ones (format_version, kind, config, step, ppar_version).
    """
    extra = dict(extra or {})
    clash = sorted(set(extra) & set(_RESERVED))
    if clash:
        raise ValueError(f"extra metadata keys {clash} clash with reserved checkpoint fields")
    metadata = _base_metadata(KIND_MODEL, step=step)
    metadata["config"] = json.dumps(config, sort_keys=True)
    metadata.update({key: json.dumps(value) for key, value in extra.items()})
    _write(Path(path), tensors, metadata)


def load_checkpoint(path: Path, *, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a model checkpoint written by `save_checkpoint`; tensors land on `map_location`.

    A missing file, a file that is not safetensors or is truncated, a training-state file, or a file from a newer
    ppar raise `PparError` naming the file and what to do.
    """
    path = Path(path)
    metadata, tensors = _read(path, expected_kind=KIND_MODEL, map_location=map_location)
    try:
        config = json.loads(metadata["config"])
    except (KeyError, json.JSONDecodeError):
        raise PparError(f"Checkpoint {path} has no readable config in its metadata: the file is damaged.") from None
    meta: dict[str, Any] = {
        "format_version": int(metadata["format_version"]),
        "kind": metadata["kind"],
        "ppar_version": metadata.get("ppar_version", "unknown"),
    }
    for key, value in metadata.items():
        if key not in _RESERVED:
            meta[key] = _json_field(path, key, value)
    return Checkpoint(path=path, tensors=tensors, config=config, step=_step(path, metadata), meta=meta)


def load_into_module(module: nn.Module, tensors: dict[str, Tensor], *, source: str, strict: bool = True) -> None:
    """Copy `tensors` into `module`'s parameters and buffers (cast to the module's dtype and device).

    Every problem is collected first and reported in one `PparError` naming `source`: missing names (in the module,
    not in the file), unexpected names (in the file, not in the module) and shape mismatches, each as the first few
    names plus a count. With `strict=False` missing and unexpected names are allowed (the matching ones are copied);
    a shape mismatch is always an error, since there is nothing sensible to copy.
    """
    expected = module.state_dict()
    missing = [name for name in expected if name not in tensors]
    unexpected = [name for name in tensors if name not in expected]
    wrong_shape = [
        f"{name} {tuple(tensors[name].shape)} vs {tuple(expected[name].shape)}"
        for name in expected
        if name in tensors and isinstance(expected[name], Tensor) and tensors[name].shape != expected[name].shape
    ]
    problems = []
    if strict and missing:
        problems.append(f"{len(missing)} missing ({_first_names(missing)})")
    if strict and unexpected:
        problems.append(f"{len(unexpected)} unexpected ({_first_names(unexpected)})")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} with another shape, file vs model ({_first_names(wrong_shape)})")
    if problems:
        raise PparError(
            f"{source} does not match the model: {'; '.join(problems)}; check that the model preset and options "
            "are those the checkpoint was made with."
        )
    # load_state_dict rather than hand-written copies: it honours modules' own loading hooks and casts dtypes.
    matching = {name: tensors[name] for name in expected if name in tensors}
    with torch.no_grad():
        module.load_state_dict(matching, strict=strict)


def save_training_state(
    path: Path,
    *,
    step: int,
    optimizer: torch.optim.Optimizer,
    extra_tensors: dict[str, Tensor],
    meta: dict[str, Any],
) -> None:
    """Write the state needed to resume training exactly, atomically.

    The optimizer state dict is flattened: tensor entries become `optim.state.<param index>.<key>` tensors, other
    entries and the param_groups go to JSON metadata, with the parameter shapes so a mismatched optimizer is caught
    on load. extra_tensors (e.g. RNG states, reliability histograms) are stored as given; meta must be JSON-able.
    """
    state_dict = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, param_state in state_dict["state"].items():
        for key, value in param_state.items():
            if isinstance(value, Tensor):
                tensors[f"{_OPTIM_PREFIX}{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    groups: list[dict[str, Any]] = []
    for group_index, group in enumerate(state_dict["param_groups"]):
        plain: dict[str, Any] = {}
        for key, value in group.items():
            if isinstance(value, Tensor):  # e.g. a tensor learning rate: keep it a tensor, exactly
                tensors[f"{_GROUP_PREFIX}{group_index}.{key}"] = value
            else:
                plain[key] = value
        groups.append(plain)
    for name, tensor in extra_tensors.items():
        tensors[f"{_EXTRA_PREFIX}{name}"] = tensor

    metadata = _base_metadata(KIND_TRAIN_STATE, step=step)
    metadata["meta"] = json.dumps(meta)
    metadata["optim_groups"] = json.dumps(groups)
    metadata["optim_scalars"] = json.dumps(scalars)
    metadata["param_shapes"] = json.dumps([list(p.shape) for p in _optimizer_params(optimizer)])
    _write(Path(path), tensors, metadata)


def load_training_state(path: Path, optimizer: torch.optim.Optimizer) -> tuple[int, dict[str, Tensor], dict[str, Any]]:
    """Restore `optimizer` from a file of `save_training_state` -> (step, extra_tensors, meta).

    extra_tensors are on the CPU, names as saved. A file whose parameter count or shapes differ from `optimizer`'s
    raises `PparError` (the model or its frozen parts changed since the run was started).
    """
    path = Path(path)
    metadata, tensors = _read(path, expected_kind=KIND_TRAIN_STATE, map_location="cpu")
    groups = _json_field(path, "optim_groups", metadata.get("optim_groups"))
    scalars = _json_field(path, "optim_scalars", metadata.get("optim_scalars"))
    saved_shapes = [tuple(shape) for shape in _json_field(path, "param_shapes", metadata.get("param_shapes"))]
    meta = _json_field(path, "meta", metadata.get("meta"))

    current_groups = optimizer.param_groups
    current_shapes = [tuple(p.shape) for p in _optimizer_params(optimizer)]
    saved_sizes = [len(group["params"]) for group in groups]
    current_sizes = [len(group["params"]) for group in current_groups]
    if saved_sizes != current_sizes or saved_shapes != current_shapes:
        first = next(
            (i for i, (a, b) in enumerate(zip(saved_shapes, current_shapes, strict=False)) if a != b),
            min(len(saved_shapes), len(current_shapes)),
        )
        raise PparError(
            f"Training state {path} was saved for another optimizer ({len(saved_shapes)} parameters in groups of "
            f"{saved_sizes}, vs {len(current_shapes)} in groups of {current_sizes}; first difference at parameter "
            f"{first}): resume with the model options of that run, or start without --resume."
        )

    state: dict[int, dict[str, Any]] = {}
    for index_text, entries in scalars.items():
        state.setdefault(int(index_text), {}).update(entries)
    group_tensors: dict[int, dict[str, Tensor]] = {}
    extra: dict[str, Tensor] = {}
    for name, tensor in tensors.items():
        if name.startswith(_OPTIM_PREFIX):
            index_text, key = name[len(_OPTIM_PREFIX) :].split(".", 1)
            state.setdefault(int(index_text), {})[key] = tensor
        elif name.startswith(_GROUP_PREFIX):
            index_text, key = name[len(_GROUP_PREFIX) :].split(".", 1)
            group_tensors.setdefault(int(index_text), {})[key] = tensor
        elif name.startswith(_EXTRA_PREFIX):
            extra[name[len(_EXTRA_PREFIX) :]] = tensor

    param_groups = []
    for group_index, (saved, current) in enumerate(zip(groups, current_groups, strict=True)):
        restored = dict(saved)
        restored.update(group_tensors.get(group_index, {}))
        for key, value in restored.items():
            # JSON turns tuples (AdamW's betas) into lists; give them back the type the optimizer built them with.
            if isinstance(value, list) and isinstance(current.get(key), tuple):
                restored[key] = tuple(value)
        param_groups.append(restored)
    # load_state_dict casts state tensors to each parameter's device and dtype (keeping `step` as saved).
    optimizer.load_state_dict({"state": state, "param_groups": param_groups})
    return _step(path, metadata), extra, meta


def safetensors_metadata(path: Path) -> dict[str, str] | None:
    """The metadata of a safetensors file from its header alone (no tensor is read), or None when `path` is not a
    readable safetensors file. Cheap: for telling files apart (a checkpoint, a prototypes file, an image)."""
    try:
        with open(path, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            if not 2 <= size <= 100_000_000:
                return None
            header = json.loads(handle.read(size))
    except (OSError, ValueError):
        return None
    meta = header.get("__metadata__", {}) if isinstance(header, dict) else None
    return dict(meta) if isinstance(meta, dict) else None


def sibling_state_path(model_path: Path) -> Path:
    """The training-state file beside a model checkpoint: `last.safetensors` -> `last.state.safetensors`."""
    model_path = Path(model_path)
    name = model_path.name
    stem = name[: -len(".safetensors")] if name.endswith(".safetensors") else name
    return model_path.with_name(f"{stem}.state.safetensors")


def _base_metadata(kind: str, *, step: int) -> dict[str, str]:
    return {
        "format_version": str(CHECKPOINT_FORMAT_VERSION),
        "kind": kind,
        "step": str(int(step)),
        "ppar_version": __version__,
    }


def _write(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    """Save `tensors` (made CPU, contiguous, unshared) with `metadata` to `path` atomically."""
    prepared: dict[str, Tensor] = {}
    seen_storages: set[tuple[int, int]] = set()
    for name, tensor in tensors.items():
        if not isinstance(tensor, Tensor):
            raise TypeError(f"checkpoint entry {name!r} is a {type(tensor).__name__}, not a tensor")
        cpu = tensor.detach().to("cpu").contiguous()
        # safetensors refuses tensors that share memory (tied weights, views of one buffer): clone all but the first
        # user of each storage. Empty tensors have no storage to share.
        storage = cpu.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        if cpu.numel() and key in seen_storages:
            cpu = cpu.clone()
        elif cpu.numel():
            seen_storages.add(key)
        prepared[name] = cpu

    # Serialised in memory and written by ppar itself into its own temporary file: `save_file` would write through a
    # temporary file of the library's, which a kill -9 leaves behind under a name ppar does not know.
    payload = safetensors.torch.save(prepared, metadata=metadata)
    atomic_write(path, lambda tmp: tmp.write_bytes(payload))


def _read(
    path: Path, *, expected_kind: str, map_location: str | torch.device
) -> tuple[dict[str, str], dict[str, Tensor]]:
    """Open a ppar safetensors file, check its format version and kind -> (metadata, tensors)."""
    if not path.exists():
        raise PparError(f"Checkpoint {path} does not exist: check the path (runs keep last.safetensors in --out).")
    if path.is_dir():
        raise PparError(f"Checkpoint {path} is a folder: pass the .safetensors file inside it.")
    device = torch.device(map_location)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PparError(
            f"Checkpoint {path} cannot be loaded onto {device}: no CUDA GPU is available; use --device cpu."
        )
    try:
        # A first open reads and validates the header only (safetensors checks that the data covers the file, which
        # catches truncation); errors while copying tensors below are then real I/O or memory errors, not reported
        # as a bad file.
        with safetensors.safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
    except Exception as exc:  # safetensors raises its own SafetensorError, OSError or ValueError for a bad file
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise PparError(
            f"Checkpoint {path} is not a readable safetensors file ({reason}): it is truncated or of another "
            "format; re-copy it or use another checkpoint."
        ) from None
    _check_header(path, metadata, expected_kind)
    with safetensors.safe_open(str(path), framework="pt", device=str(device)) as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (not a dict)
    return metadata, tensors


def _check_header(path: Path, metadata: dict[str, str], expected_kind: str) -> None:
    if "format_version" not in metadata or "kind" not in metadata:
        raise PparError(
            f"Checkpoint {path} is a safetensors file but not a ppar checkpoint (no format_version/kind metadata): "
            "pass a file written by ppar, or give bare CLIP weights with --pretrained."
        )
    try:
        version = int(metadata["format_version"])
    except ValueError:
        version = -1
    if version < 1:
        raise PparError(
            f"Checkpoint {path} has an unknown format version {metadata['format_version']!r}: it was not written by "
            "ppar or its metadata is damaged; use another checkpoint."
        )
    if version > CHECKPOINT_FORMAT_VERSION:
        raise PparError(
            f"Checkpoint {path} has format version {metadata['format_version']!r} but this ppar "
            f"({__version__}) reads up to {CHECKPOINT_FORMAT_VERSION}: upgrade ppar to read it."
        )
    kind = metadata["kind"]
    if kind != expected_kind:
        if kind == KIND_TRAIN_STATE:
            hint = "pass the model checkpoint beside it (the name without .state)"
        elif kind == KIND_MODEL:
            hint = "pass its training-state file (the same name ending .state.safetensors)"
        else:
            hint = "pass a ppar checkpoint"
        raise PparError(f"Checkpoint {path} is a {kind!r} file, not a {expected_kind!r} file: {hint}.")


def _step(path: Path, metadata: dict[str, str]) -> int:
    try:
        return int(metadata["step"])
    except (KeyError, ValueError):
        raise PparError(f"Checkpoint {path} has no valid step in its metadata: the file is damaged.") from None


def _json_field(path: Path, key: str, value: str | None) -> Any:
    if value is None:
        raise PparError(f"Checkpoint {path} lacks the {key!r} metadata field: the file is damaged or incomplete.")
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        raise PparError(f"Checkpoint {path} has an unreadable {key!r} metadata field: the file is damaged.") from None


def _optimizer_params(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    """The parameters in the order `optimizer.state_dict()` numbers them (group by group)."""
    return [param for group in optimizer.param_groups for param in group["params"]]


def _first_names(names: list[str]) -> str:
    shown = ", ".join(names[:_NAMES_SHOWN])
    more = len(names) - _NAMES_SHOWN
    return f"{shown}, and {more} more" if more > 0 else shown
