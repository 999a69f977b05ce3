"""Experiments: many run folders side by side.

`records` reads what a run logged (metrics.jsonl, eval.json), `runs` finds run folders and summarises each (state,
steps, best and last mIoU), `compare` builds the ablation table of several runs or seed groups, `plots` draws the
training curves of several runs overlaid (matplotlib, the optional extra `ppar[plots]`).

Modules here are imported directly (`from ppar_core.experiments.runs import list_runs`); this package imports
nothing, so importing one part never pulls in the others.
"""
