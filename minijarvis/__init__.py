"""minijarvis: a minimal, faithful reimplementation of JARVIS (I-JEPA masked prediction in LLaVA stage 1)."""

__version__ = "0.1.0"
