"""minijarvis: a minimal, faithful reimplementation of JARVIS (I-JEPA masked prediction in LLaVA's
stage 1) and VisPer-LM (expert-embedding distillation at chosen LLM layers, with task tokens).

The method is the package's top: ``masking`` (I-JEPA's multi-block masks), ``attn_mask`` (the four
attention rules as one mask), ``losses``, ``model`` (the MLLM and every loss in one forward),
``visper`` (VisPer-LM's task tokens and predictors), ``targets`` and ``encoders`` (the frozen
vision encoders), ``llm`` (the LLM and its tokenizer), ``config``, ``viz`` (the pictures) and
``errors``. The machinery lives in wings: ``data/``, ``training/``, ``evaluation/``, ``probes/``,
``bench/``, ``export/`` and ``toyworld/``. The method imports no wing (tests/test_layout.py).
"""

__version__ = "0.1.0"
