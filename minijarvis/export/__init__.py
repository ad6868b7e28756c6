"""Export to the ecosystem: ``python -m minijarvis.export`` writes a checkpoint as transformers'
``LlavaForConditionalGeneration`` (``llava.py``); ``hf_vision.py`` turns the timm CLIP / SigLIP
tower into transformers' vision model."""
