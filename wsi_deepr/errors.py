"""One exception hierarchy for wsi-deepr.

Every error subclasses both :class:`WsiDeeprError` and the builtin it refines, so
callers can catch either (the zarr-python pattern).  Messages name the offending
path or value and say what to do about it; the CLI prints them as one line and
exits with status 2.
"""

from __future__ import annotations

__all__ = [
    "WsiDeeprError",
    "OptionError",
    "SlideNotFoundError",
    "UnsupportedFormatError",
    "CorruptSlideError",
    "ModelError",
    "ModelNotFoundError",
    "ModelMismatchError",
    "OutputError",
    "OutputExistsError",
    "OutputLockedError",
    "DiskFullError",
    "ProviderUnavailableError",
    "TilingError",
]


class WsiDeeprError(Exception):
    """Base class of every error raised on purpose by wsi-deepr."""


class OptionError(WsiDeeprError, ValueError):
    """An option has a value that is not allowed (checked before any work starts)."""


class SlideNotFoundError(WsiDeeprError, FileNotFoundError):
    """The slide path does not exist or is not a regular file."""


class UnsupportedFormatError(WsiDeeprError, ValueError):
    """The file exists but no backend can read it as a slide or image."""


class CorruptSlideError(WsiDeeprError, ValueError):
    """The file claims a supported format but is truncated or damaged."""


class ModelError(WsiDeeprError, ValueError):
    """The model file is not a usable ONNX model or its model card is invalid."""


class ModelNotFoundError(ModelError, FileNotFoundError):
    """No model of that name or path is installed."""


class ModelMismatchError(ModelError):
    """The model cannot be applied to this slide (channels or modality differ)."""


class OutputError(WsiDeeprError, OSError):
    """The output path cannot be written."""


class OutputExistsError(OutputError, FileExistsError):
    """The output exists and ``overwrite`` was not given."""


class OutputLockedError(OutputError):
    """Another job holds the lock of this output (it is being written)."""


class DiskFullError(OutputError):
    """The output's file system ran out of space; the finished blocks are kept and a rerun resumes."""


class ProviderUnavailableError(WsiDeeprError, RuntimeError):
    """The requested ONNX Runtime execution provider is not usable here."""


class TilingError(WsiDeeprError, ValueError):
    """Tile, halo and overlap do not fit together."""
