"""``python -m deconvnet_attr.report ...``: the same as ``deconvnet-attr report ...``."""

import sys

from .cli import main

sys.exit(main())
