"""Training machinery around the method (train.py's parts).

* ``cli.py``: train.py's flags -> configs, model and data set.
* ``runtime.py``: processes (torchrun), the LR schedule, resumable state, logs, loss.png.
* ``checkpoint.py``: saving and loading a model (safetensors + config.json + tokenizer).
* ``resume.py``: which flags a ``--resume`` may change.
* ``trackers.py``: ``--report-to`` (TensorBoard, Weights & Biases).
"""
