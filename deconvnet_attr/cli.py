"""The ``deconvnet-attr`` command: thin dispatch to the modules that do the work.

``deconvnet-attr train ...``  → :func:`deconvnet_attr.train.main`
``deconvnet-attr report ...`` → :func:`deconvnet_attr.report.main`
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "report": ("deconvnet_attr.report", "build the offline HTML report (paper figures, tables)"),
    "train": ("deconvnet_attr.train", "train ZFNet / the Fashion-MNIST reference model"),
}


def main(argv: list[str] | None = None) -> int:
    """Run ``deconvnet-attr COMMAND [ARGS...]``; ``COMMAND --help`` shows its own options."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(
        prog="deconvnet-attr",
        description="Zeiler & Fergus (2013) deconvnet tools for PyTorch CNNs.",
    )
    parser.add_argument(
        "command",
        choices=sorted(COMMANDS),
        help="; ".join(f"{name}: {doc}" for name, (_, doc) in sorted(COMMANDS.items())),
    )
    args, rest = parser.parse_known_args(argv[:1])
    module = importlib.import_module(COMMANDS[args.command][0])
    return module.main(rest + argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
