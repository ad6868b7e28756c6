"""Speed and memory (bench.py's parts).

* ``steps.py``: the training steps measured (one model viewed as each method), FLOPs, MFU.
* ``measure.py``: timing with device syncs, named parts inside a step, peak memory, rounds.
* ``report.py``: the targets decided from a result, the printed table, docs/speed.md's rows.
* ``padding.py``: what stage 2's batch order costs in padding (``bench.py --stage2-padding``).
"""
