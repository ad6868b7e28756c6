"""``python -m minijarvis.export``: the exporter's command line (``llava.py``)."""
import sys

from minijarvis.errors import run_main
from minijarvis.export.llava import main

sys.exit(run_main(main, prog="python -m minijarvis.export"))
