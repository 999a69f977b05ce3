"""The ablation table of the synthetic DG benchmark: each method variant, several seeds, with the embedded prior and
with random-init `tiny`, all at the demo's budget (the `synth-tiny` preset), on the CPU.

    python bench/ablation.py                                  # the full table (3 seeds; about 40 min on 2 cores)
    python bench/ablation.py --seeds 1 --iters 5 --variants ppar,erm --random-variants ppar   # a quick look

What runs: the demo's synthetic domains (200 synth-source images for training; 40 each of synth-real, synth-night
and synth-fog for evaluation, `ppar_core.demo`); the prior of the default recipe (built or reused from the cache,
or --prior FILE) and its text prototypes; then `ppar_core.demo.run_variants` for every variant in --variants with
the prior and every variant in --random-variants with random weights (their prototypes come from the same random
tower, as in `ppar train` without a prototypes file), each with seeds 0..--seeds-1. Every figure is the mIoU of the
run's own final evaluation (`eval.json`): per target and the mean over targets, then mean, sample standard
deviation, min and max over the seeds (`ppar_core.demo.summarize`).

Prints a Markdown table (mean ± std, n seeds) whose last line reads `ablation runs=<n> minutes=<float>`; the
results (every run's figures too) go to --json PATH, or to $OUT/ablation.json when $OUT is set.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

# Why a path insert: the benchmarks are scripts (`python bench/x.py`), and `common` sits beside them.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, write_result  # noqa: E402

from ppar_core.demo import (  # noqa: E402
    TARGET_DOMAINS,
    VARIANTS,
    claim_demo_folder,
    ensure_prior,
    ensure_prototypes,
    ensure_synthetic_data,
    run_variants,
    summarize,
)
from ppar_core.prior.pretrain import PretrainConfig, read_prior_info, recipe_dict  # noqa: E402

DEFAULT_VARIANTS = "ppar,erm,align-none,reweight-none,vtp-ema,vtp-mix"


def _variants(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    return names


def _parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_ablation"), help="working folder (a demo folder)")
    parser.add_argument("--variants", type=_variants, default=_variants(DEFAULT_VARIANTS), help="with the prior")
    parser.add_argument("--random-variants", type=_variants, default=_variants("ppar,erm"), help="random init")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per variant (0..N-1)")
    parser.add_argument("--iters", type=int, default=None, help="training steps (default: the synth-tiny preset's)")
    parser.add_argument("--prior", type=Path, default=None, help="a prior file (default: the cached default prior)")
    parser.add_argument("--json", dest="json_path", help="write the results here (default: $OUT/ablation.json)")
    return parser.parse_args(argv)


def _stage(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


def markdown(summary: dict[str, dict[str, dict[str, dict[str, float]]]]) -> str:
    """{init: {variant: {target: stats}}} -> a Markdown table, one row per (init, variant), mean ± std (n)."""
    columns = [*TARGET_DOMAINS, "mean"]
    lines = ["| init | variant | " + " | ".join(columns) + " |", "|---|---|" + "---:|" * len(columns)]
    for init, variants in summary.items():
        for variant, stats in variants.items():
            cells = [
                f"{stats[c]['mean']:.2f} ± {stats[c]['std']:.2f} ({int(stats[c]['n'])})" if c in stats else "-"
                for c in columns
            ]
            lines.append(f"| {init} | {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    started = time.perf_counter()
    out: Path = args.out
    claim_demo_folder(out)
    _stage("Synthetic domains")
    ensure_synthetic_data(out / "data")
    recipe = PretrainConfig()
    if args.prior is None:
        _stage("CLIP prior (default recipe; built once, then cached)")
        prior, _ = ensure_prior(recipe)
    else:
        prior = args.prior
    seeds = list(range(args.seeds))
    runs: dict[str, dict[str, Any]] = {}
    if args.variants:
        prototypes = ensure_prototypes(out / "prototypes-prior.safetensors", pretrained=str(prior))
        runs["prior"] = run_variants(
            out / "prior", args.variants, seeds=seeds, pretrained=str(prior), prototypes=prototypes,
            iters=args.iters, data_root=out / "data", on_stage=_stage,
        )  # fmt: skip
    if args.random_variants:
        runs["random"] = run_variants(
            out / "random", args.random_variants, seeds=seeds, pretrained=None, prototypes=None,
            iters=args.iters, data_root=out / "data", on_stage=_stage,
        )  # fmt: skip
    summary = {init: summarize(results) for init, results in runs.items()}
    minutes = (time.perf_counter() - started) / 60.0
    count = sum(len(r) for results in runs.values() for r in results.values())
    payload = {
        "machine": machine_info(),
        "prior": str(prior),
        "prior_recipe": recipe_dict(read_prior_info(prior).recipe),
        "seeds": seeds,
        "iters": args.iters,
        "summary": summary,
        "runs": {
            init: {
                v: [
                    {"seed": s, "report_targets": {t: e["miou"] for t, e in (r.report or {})["targets"].items()}}
                    for s, r in zip(seeds, results, strict=True)
                ]
                for v, results in rs.items()
            }
            for init, rs in runs.items()
        },  # fmt: skip
        "minutes": minutes,
    }
    write_result("ablation", payload, path=args.json_path)
    print(markdown(summary))
    print(f"ablation runs={count} minutes={minutes:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
