"""The ``deconvnet-attr`` command: thin dispatch to the modules that do the work.

``deconvnet-attr train ...``  → :func:`deconvnet_attr.train.main`
``deconvnet-attr report ...`` → :func:`deconvnet_attr.report.main`
``deconvnet-attr transfer ...`` → :func:`deconvnet_attr.transfer_cli.main`

A user error (a bad path, file or value: ``OSError``, ``ValueError``, ``TypeError``) ends a command
with one line ``error: ...`` on stderr and exit status 2 (:func:`user_error`); ``--debug`` shows
the traceback instead. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "USER_ERRORS",
    "main",
    "one_line",
    "one_line_warnings",
    "run",
    "user_error",
    "writable_dir",
]

COMMANDS = {
    "report": ("deconvnet_attr.report", "build the offline HTML report (paper figures, tables)"),
    "transfer": (
        "deconvnet_attr.transfer_cli",
        "frozen layers + softmax/SVM on a new data set (Tables 4-7, Fig. 9)",
    ),
    "train": ("deconvnet_attr.train", "train ZFNet / the Fashion-MNIST reference model"),
}
USER_ERRORS = (OSError, ValueError, TypeError)
"""The exception types a command reports as a user error (exit status 2)."""


def one_line(error: BaseException | str, limit: int = 400) -> str:
    """``error``'s message on one line (whitespace runs collapsed), cut to ``limit`` characters."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def user_error(error: BaseException) -> int:
    """Print ``error: MESSAGE`` (one line) on stderr; returns the exit status 2."""
    print(f"error: {one_line(error)} (--debug shows the traceback)", file=sys.stderr)
    return 2


@contextlib.contextmanager
def one_line_warnings() -> Iterator[None]:
    """Within the block, each warning prints as one line ``warning: MESSAGE`` on stderr."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"warning: {one_line(message, limit=1000)}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def writable_dir(path: Path, flag: str = "--out") -> None:
    """Create the directory ``path``; ValueError naming ``flag`` and ``path`` when it is a file or
    cannot be created or written."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path} is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".deconvnet-attr-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"{flag} {path} cannot be written: {err}") from err


def run(command: str, argv: list[str]) -> int:
    """Run ``deconvnet-attr COMMAND ARGV...``; returns its exit status, 2 (with one line
    ``error: ...`` on stderr) for a user error it raises, unless ``--debug`` is in ``argv``."""
    module = importlib.import_module(COMMANDS[command][0])
    try:
        with one_line_warnings():
            return module.main(argv) or 0
    except USER_ERRORS as err:
        if "--debug" in argv:
            raise
        return user_error(err)


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
    return run(args.command, rest + argv[1:])


if __name__ == "__main__":
    sys.exit(main())
