"""Per-layer probes (probe.py's parts): does LLM layer l encode what a target encoder sees?

* ``core.py``: hidden states in one forward, the probes of all layers trained as one batch, scores.
* ``run.py``: inputs checked before any work, the probe images, one checkpoint's scores.
* ``report.py``: probe.json, probe.csv and probe.png.
"""
