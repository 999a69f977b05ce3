"""The training engine: optimizer and schedule (optim.py), the deterministic sample stream (sampling.py), the
process group (distributed.py) and the training loop (train.py).

Modules here are imported directly (`from ppar_core.engine.train import train`); this package imports nothing, so
importing one part never pulls in the others.
"""
