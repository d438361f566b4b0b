"""The ``wsi-deepr`` command line: a thin adapter over :mod:`wsi_deepr.api`.

One module per command; heavy imports happen inside the command bodies so that
``wsi-deepr --help`` is instant.
"""

from __future__ import annotations

import importlib

import click

from wsi_deepr._version import __version__

# (module, attribute) of every sub-command, registered lazily in ``main``.
_COMMANDS: tuple[tuple[str, str], ...] = (
    ("refocus", "refocus"),
    ("batch", "batch"),
    ("info", "info"),
    ("models", "models"),
    ("simulate", "simulate"),
    ("dataset", "dataset"),
    ("qc", "qc"),
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wsi-deepr")
def cli() -> None:
    """Refocus out-of-focus whole-slide images with Deep-R models."""


for _module, _attr in _COMMANDS:
    cli.add_command(getattr(importlib.import_module(f".{_module}", __name__), _attr))


def main(args: list[str] | None = None) -> int:
    """Run the CLI with ``args`` (default: ``sys.argv[1:]``) and return the exit code."""
    try:
        cli.main(args=args, prog_name="wsi-deepr", standalone_mode=True)
    except SystemExit as exc:  # click always exits; turn it into a return code
        return int(exc.code or 0)
    return 0
