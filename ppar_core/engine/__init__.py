"""The training engine: optimizer and schedule (optim.py), the training loop (train.py), evaluation (evaluate.py),
whole-image / sliding-window / test-time-augmented inference (inference.py) and the process group (distributed.py).

Modules here are imported directly (`from ppar_core.engine.train import train`); this package imports nothing, so
importing one part never pulls in the others.
"""
