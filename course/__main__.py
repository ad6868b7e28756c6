"""``python -m course`` = ``python -m course.grade``."""
import sys

from .grade import main

sys.exit(main())
