"""A miniature world where the papers' question has an answer: pretrained tiny parts.

With random weights nothing in a tiny run *knows* anything, so JARVIS vs LLaVA on ShapesBench
is noise around chance. The papers' claim is about knowledge: a caption-trained encoder misses
what captions omit (counts, relations, depth), a self-supervised or expert encoder has it, and
distilling the expert into the LLM helps. The toy world builds that premise in miniature, on
the synthetic scenes of ``minijarvis.data.shapes`` (``world.py``: data; ``parts.py``: training and
measurements; ``build.py``: the build):

* a tiny LLM that knows the toy language (captions, conversations, benchmark questions);
* a caption encoder ("toy CLIP") trained contrastively on the incomplete captions;
* a depth expert ("toy DINOv2") trained on the geometry the renderer knows (per-patch depth
  and occupancy, object count).

The shipped parts live in ``assets/`` next to this file and are the tiny preset's defaults
(``config.preset("tiny")``; ``pretrained=False`` or ``train.py --random-init`` for random
weights). Rebuild them (seeded; a few minutes on 2 CPU cores):

    python -m minijarvis.toyworld build                       # writes minijarvis/toyworld/assets
    python -m minijarvis.toyworld build --out /tmp/toy --size small --seed 1
"""
from minijarvis.config import TOY_ASSETS  # noqa: F401  (where the shipped parts are)
