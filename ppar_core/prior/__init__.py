"""The embedded CLIP prior: ppar's own miniature CLIP, pretrained on synthetic image-text pairs (`pretrain.py`,
from the pairs of `pairs.py` and the loss of `loss.py`), and its checks with no training of any head (`zeroshot.py`).
It sits above the CLIP towers, the optimizer and the evaluation it uses; the demo and `ppar pretrain` use it."""
