"""Evaluation, once for every caller: `targets` turns target specs into a list of `Target`s, `evaluate` scores a
model on them (training's periodic evaluation and `ppar eval` alike), `predictions` scores saved prediction PNGs,
and `report` builds the one report shape (`eval.json`) from either."""
