"""``python -m deconvnet_attr.report ...``: the same as ``deconvnet-attr report ...``."""

import sys

from deconvnet_attr.cli import run

sys.exit(run("report", sys.argv[1:]))
