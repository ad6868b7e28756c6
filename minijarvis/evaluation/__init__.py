"""Evaluation (eval.py's parts).

* ``inference.py``: greedy generation and option scoring with the training-time attention.
* ``benchmarks.py``: vision-centric benchmarks from local files: loading, answers, scores.
* ``shapesbench.py``: ShapesBench, a CV-Bench-style benchmark on the synthetic scenes.
"""
