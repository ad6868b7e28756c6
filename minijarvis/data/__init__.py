"""Data: what a run reads and how it becomes tensors.

* ``llava.py``: LLaVA-format records (JSON + image folder), the data set and its collate
  (stage-1 captions, stage-2 conversations); bad records skipped with a reason.
* ``images.py``: images loaded and fitted to the encoders' square input (crop or pad), bounded.
* ``text.py``: text -> token ids and labels, built together segment by segment.
* ``sampler.py``: stage 2's batch order (LLaVA's grouping by modality and length).
* ``shapes.py``: the built-in synthetic scenes and their rendering.
* ``synthetic.py``: their captions, instructions and LLaVA records (the offline default data).
"""
