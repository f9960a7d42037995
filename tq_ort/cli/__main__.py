"""`python -m tq_ort.cli ...` = `tq-ort ...`."""
import sys

from .main import main

sys.exit(main())
