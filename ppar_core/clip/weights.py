"""Building a CLIP model from a preset and loading its pretrained weights, safely and offline-first.

Sources for `pretrained`:
- an open_clip tag (`openai`, `laion2b_s34b_b88k`, ...): downloaded through open_clip where the machine can reach the
  hub; with HF_HUB_OFFLINE=1 or no network it fails at once with one sentence naming the local-file option;
- a local `.safetensors` file (a state dict with open_clip / OpenAI key names);
- a local open_clip checkpoint (`.pt`/`.pth`/`.bin`, a state dict, possibly under "state_dict"), read with
  `torch.load(weights_only=True)`: a file that needs full unpickling is refused, never executed;
- OpenAI's original release file (a TorchScript archive), read with `torch.jit.load`, which restores tensors and
  TorchScript code but never runs Python's pickle on arbitrary classes.

Construction from a preset never touches the network.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import torch

from ppar_core.clip.presets import ClipPreset, resolve_preset
from ppar_core.errors import PparError

if TYPE_CHECKING:
    import open_clip

# Non-tensor entries OpenAI's TorchScript files keep in their state dict (integers, not weights).
_TORCHSCRIPT_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
_LOCAL_FILE_HINT = (
    "pass a local weights file instead with --pretrained PATH (.safetensors, open_clip .pt/.bin, or OpenAI's .pt)"
)


def is_torchscript_archive(path: str | Path) -> bool:
    """True when `path` is a TorchScript zip archive (OpenAI's original CLIP files are)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        # Why: torch.save archives hold data.pkl + data/; TorchScript archives also hold compiled code/ and constants.
        return any("/code/" in n or n.endswith("constants.pkl") for n in archive.namelist())


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weights file into a CPU state dict (name -> tensor), without unpickling arbitrary objects.

    Handles `.safetensors`, `torch.save` state dicts (optionally under "state_dict", optionally with a DDP
    "module." prefix) and TorchScript archives. Raises PparError naming the file on anything else.
    """
    path = Path(path)
    if not path.is_file():
        raise PparError(f"Weights file {path} does not exist: check the path given to --pretrained.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw: Any = load_file(str(path), device="cpu")
        elif is_torchscript_archive(path):
            with warnings.catch_warnings():  # torch >= 2.9 marks jit.load deprecated; OpenAI's files still need it
                warnings.simplefilter("ignore", FutureWarning)
                scripted = torch.jit.load(str(path), map_location="cpu")
            raw = {k: v for k, v in scripted.state_dict().items() if k not in _TORCHSCRIPT_EXTRA_KEYS}
        else:
            raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise PparError(
            f"Weights file {path} contains pickled Python objects that ppar will not load (unsafe): "
            "convert it to .safetensors with the tool that made it, or save only its state dict."
        ) from exc
    except PparError:
        raise
    except Exception as exc:  # truncated, corrupt or foreign files: one sentence, not a traceback
        raise PparError(
            f"Weights file {path} could not be read ({type(exc).__name__}): it may be truncated or not a "
            "CLIP checkpoint; download it again or pass another file."
        ) from exc
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict) or not raw or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise PparError(f"Weights file {path} does not hold a state dict of tensors: pass a CLIP checkpoint.")
    if all(k.startswith("module.") for k in raw):
        raw = {k[len("module.") :]: v for k, v in raw.items()}
    return raw


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """A quick TCP probe of the Hugging Face endpoint, so that an offline machine fails in seconds, not in ~50."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # behind a proxy a direct probe says nothing; let the download decide
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _cached_tag_file(cfg: dict[str, Any]) -> str | None:
    """The tag's weights if already in the local Hugging Face cache, else None (never downloads)."""
    hub = cfg.get("hf_hub", "")
    if not hub:
        return None
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        return None
    repo, filename = os.path.split(hub)
    names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    for name in names:
        try:
            return str(hf_hub_download(repo_id=repo, filename=name, local_files_only=True))
        except Exception:  # not cached under this name
            continue
    return None


def resolve_pretrained_file(preset: ClipPreset, pretrained: str) -> Path:
    """The local file holding `pretrained` weights: the path itself, or the tag's cached / downloaded file."""
    if Path(pretrained).expanduser().is_file():
        return Path(pretrained).expanduser()
    import open_clip

    arch = preset.arch
    cfg = open_clip.get_pretrained_cfg(arch, pretrained) if arch else {}
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(arch) if arch else []
        known = f"known tags for {preset.name}: {', '.join(tags)}" if tags else f"{preset.name} has no download tags"
        raise PparError(
            f"--pretrained {pretrained!r} is neither an existing file nor a tag ({known}); {_LOCAL_FILE_HINT}."
        )
    cached = _cached_tag_file(cfg)
    if cached:
        return Path(cached)
    why = "HF_HUB_OFFLINE is set" if _offline() else ("the hub is unreachable" if not _hub_reachable() else "")
    if why:
        raise PparError(f"Cannot download the {pretrained!r} weights for {preset.name} ({why}): {_LOCAL_FILE_HINT}.")
    try:
        return Path(open_clip.download_pretrained(cfg))
    except Exception as exc:
        raise PparError(
            f"Downloading the {pretrained!r} weights for {preset.name} failed ({type(exc).__name__}): "
            f"{_LOCAL_FILE_HINT}."
        ) from exc


def resolve_quick_gelu(preset: str | ClipPreset, pretrained: str | None) -> bool:
    """Whether the tower must use QuickGELU for these weights (the activation is not stored in state dicts).

    A tag says so itself (open_clip's pretrained table); OpenAI's TorchScript files always use it; a
    `.safetensors` file may say so in its metadata (`quick_gelu`: "true"/"false"); otherwise the preset decides.
    """
    preset = resolve_preset(preset)
    if pretrained is None:
        return preset.quick_gelu
    path = Path(pretrained).expanduser()
    if path.is_file():
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            try:
                with safe_open(str(path), framework="pt") as f:
                    flag = (f.metadata() or {}).get("quick_gelu")
            except Exception:
                flag = None  # unreadable files are reported by the loader, with the file name
            if flag is not None:
                return flag.strip().lower() in {"1", "true", "yes"}
            return preset.quick_gelu
        return True if is_torchscript_archive(path) else preset.quick_gelu
    if preset.arch:
        import open_clip

        cfg = open_clip.get_pretrained_cfg(preset.arch, pretrained)
        if cfg:
            return bool(cfg.get("quick_gelu", False))
    return preset.quick_gelu


def model_config_of(preset: ClipPreset) -> dict[str, Any]:
    """The open_clip model config dict ({"embed_dim", "vision_cfg", "text_cfg", ...}) of a preset."""
    if preset.model_config is not None:
        return json.loads(json.dumps(preset.model_config))  # a deep copy: open_clip mutates nothing, but be safe
    import open_clip

    cfg = open_clip.get_model_config(preset.arch) if preset.arch else None
    if cfg is None:
        raise PparError(f"open_clip does not know the architecture {preset.arch!r} of preset {preset.name}.")
    return cfg


def load_clip_weights(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], *, source: str) -> None:
    """Load a full CLIP state dict into `model` strictly; mismatches become one PparError naming the tensors."""
    from open_clip.model import resize_pos_embed

    state_dict = dict(state_dict)
    # Why: an open_clip checkpoint saved at another image size carries another position grid; resample it once.
    resize_pos_embed(state_dict, model)
    logit_scale, own_scale = state_dict.get("logit_scale"), getattr(model, "logit_scale", None)
    if logit_scale is not None and own_scale is not None and logit_scale.ndim != own_scale.ndim:
        state_dict["logit_scale"] = logit_scale.reshape(own_scale.shape)  # scalar vs (1,) across open_clip versions
    own = model.state_dict()
    # Why: TorchScript exports also carry non-persistent buffers (the text causal mask); they are rebuilt, not loaded.
    for name, _ in model.named_buffers():
        if name not in own:
            state_dict.pop(name, None)
    missing = sorted(k for k in own if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in own)
    wrong = sorted(k for k in own if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape))
    if missing or unexpected or wrong:

        def _few(names: list[str]) -> str:
            return ", ".join(names[:4]) + (f" (+{len(names) - 4} more)" if len(names) > 4 else "")

        parts = [f"missing {_few(missing)}" if missing else "", f"unexpected {_few(unexpected)}" if unexpected else ""]
        parts.append(f"wrong shape {_few(wrong)}" if wrong else "")
        detail = "; ".join(p for p in parts if p)
        raise PparError(
            f"Weights from {source} do not fit this architecture ({detail}): pass weights of the same model."
        )
    model.load_state_dict(state_dict, strict=True)


def build_clip_model(
    preset: str | ClipPreset, *, pretrained: str | None = None, quick_gelu: bool | None = None
) -> open_clip.model.CLIP:
    """The full open_clip CLIP model (image and text towers) of `preset`, on the CPU, in eval mode.

    The architecture is built at the preset's native image size (224): position embeddings are interpolated per
    input size by `DenseClipEncoder`. `pretrained=None` gives random weights and never touches the network.
    `quick_gelu=None` resolves the activation from the weights (see `resolve_quick_gelu`).
    """
    from open_clip.model import CLIP

    preset = resolve_preset(preset)
    # Why first: a missing download must fail in seconds, before a large random init.
    path = resolve_pretrained_file(preset, pretrained) if pretrained is not None else None
    if quick_gelu is None:
        quick_gelu = resolve_quick_gelu(preset, pretrained)
    cfg = model_config_of(preset)
    cfg.pop("custom_text", None)
    cfg["quick_gelu"] = quick_gelu or cfg.get("quick_gelu", False)
    model = CLIP(**cfg)
    if path is not None:
        load_clip_weights(model, load_state_dict_file(path), source=str(path))
    return model.eval()


def get_tokenizer(preset: str | ClipPreset) -> Any:
    """The text tokenizer of `preset` (CLIP's BPE; its vocabulary ships with open_clip, so this works offline).

    Calling it on a list of strings returns a (N, context_length) int64 tensor.
    """
    from open_clip.tokenizer import SimpleTokenizer

    preset = resolve_preset(preset)
    context_length = int(model_config_of(preset)["text_cfg"].get("context_length", 77))
    return SimpleTokenizer(context_length=context_length)


def count_parameters(preset: str | ClipPreset) -> tuple[int, int]:
    """(image-tower parameters, all other parameters) of `preset`.

    Counted on a real model for presets with their own config (`tiny`, built in well under a second) and on
    PyTorch's meta device for the big ones: the architecture is built without allocating or initialising weights.
    """
    from open_clip.model import CLIP

    preset = resolve_preset(preset)
    cfg = model_config_of(preset)
    cfg.pop("custom_text", None)
    if preset.model_config is not None:
        model = CLIP(**cfg)
    else:
        with torch.device("meta"):
            model = CLIP(**cfg)
    image = sum(p.numel() for p in model.visual.parameters())
    return image, sum(p.numel() for p in model.parameters()) - image
