"""`ppar export`: a checkpoint becomes one self-describing .onnx file that onnxruntime runs without torch.

The library does the work (`ppar_core.export.export_onnx`); this module parses flags and prints what was written
and how closely onnxruntime matched PyTorch.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ppar_cli.options import ForceOption, JsonOption, console, print_json
from ppar_cli.render import setup_logging

# Paragraphs as single lines (built from pieces to keep the source narrow): Typer keeps hard wraps as they are.
HELP = (
    "Export a checkpoint to ONNX: one file that onnxruntime (or TensorRT) runs without torch.\n\n"
    "The graph takes normalised image windows (N,3,H,W) float32 and returns class logits (N,K,H/4,W/4) float32; "
    "N, H and W are dynamic (H and W multiples of the patch size) unless --crop fixes H and W. The file's metadata "
    "carries the class names, palette, label space, mean/std and the recommended inference protocol, so that "
    "`ppar predict model.onnx IMAGES...` needs nothing else.\n\n"
    "The check (on by default) runs onnxruntime and PyTorch on a random batch and on a street image "
    "(--check-image, or a synthetic one) through the inference protocol, and prints the largest logit difference "
    "and the argmax agreement; a file that fails it is not written. Export takes about a minute for ViT-B/16 on a "
    "CPU.\n\n"
    "Example: [bold]ppar export runs/g2cbm/last.safetensors --out g2cbm.onnx[/bold]\n\n"
    "For TensorRT (fixed 512x512 windows, half precision): "
    "[bold]ppar export runs/g2cbm/last.safetensors --out g2cbm-512.onnx --crop 512 --fp16[/bold]\n"
)


def command(
    checkpoint: Annotated[Path, typer.Argument(help="A ppar model checkpoint (.safetensors).", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="The .onnx file to write.", show_default=False)],
    crop: Annotated[
        int | None, typer.Option(help="Fixed input size CROP x CROP instead of dynamic H and W.", show_default=False)
    ] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset, 17 or newer.")] = 18,
    fp16: Annotated[bool, typer.Option("--fp16", help="Weights and compute in half precision.")] = False,
    check: Annotated[bool, typer.Option("--check/--no-check", help="Compare onnxruntime with PyTorch.")] = True,
    check_image: Annotated[
        Path | None, typer.Option(help="Image for the check (default: a synthetic scene).", show_default=False)
    ] = None,
    force: ForceOption = False,
    json_out: JsonOption = False,
) -> None:
    from ppar_core.export import export_onnx
    from ppar_core.imageio import read_user_image

    image = read_user_image(check_image) if check_image is not None and check else None
    setup_logging()
    result = export_onnx(
        checkpoint, out, crop=crop, opset=opset, fp16=fp16, check=check, check_image=image, force=force
    )
    meta = result.metadata
    if json_out:
        print_json({
            "path": str(result.path), "size_bytes": result.size_bytes, "export_seconds": result.export_seconds,
            "check_seconds": result.check_seconds, "metadata": asdict(meta),
            "checks": [{**asdict(c), "passed": c.passed} for c in result.checks],
        })  # fmt: skip
        return
    size = "N x 3 x H x W" if meta.input_size is None else f"N x 3 x {meta.input_size[0]} x {meta.input_size[1]}"
    console.print(
        f"Wrote [bold]{escape(str(result.path))}[/bold]: {result.size_bytes / 2**20:.1f} MiB, {meta.precision}, "
        f"input {size} (patch {meta.patch_size}), {meta.num_classes} classes, opset {meta.opset} "
        f"({meta.exporter} exporter), in {result.export_seconds:.1f} s."
    )
    for c in result.checks:
        console.print(
            f"check {c.name} {c.shape}: max |onnxruntime - PyTorch| {c.max_abs_diff:.2e} (allowed {c.tolerance:.2e}), "
            f"argmax agreement {c.agreement:.3%}"
        )
    if not check:
        console.print("[yellow]Not compared with PyTorch (--no-check).[/yellow]")
