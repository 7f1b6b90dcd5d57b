"""One exception hierarchy for bad inputs, bad files and bad models.

Every error a user can cause derives from :class:`SemlicError`, so a caller (the CLI
included) can catch that one class. Messages say what was expected and what was found.
"""

from __future__ import annotations


class SemlicError(Exception):
    """Base class of every error semlic raises on purpose."""

    exit_code = 1


# --- input images -------------------------------------------------------------------------
class ImageInputError(SemlicError):
    """An input image that cannot be used."""

    exit_code = 3


class UnreadableImageError(ImageInputError):
    """The file is not an image Pillow can decode (missing, empty, corrupt, truncated)."""


class UnsupportedImageModeError(ImageInputError):
    """The image decodes but its colour model is not accepted (CMYK, LAB, ...)."""


# --- the .sem file format -----------------------------------------------------------------
class FormatError(SemlicError):
    """A compressed file that cannot be decoded."""

    exit_code = 4


class BadMagicError(FormatError):
    """The file does not start with the semlic magic: it is not a semlic file."""


class UnsupportedVersionError(FormatError):
    """The file declares a format version this build cannot read."""


class TruncatedFileError(FormatError):
    """The file ends before the header or a layer is complete."""


class ChecksumError(FormatError):
    """A checksum over the header or a layer does not match: the bytes were altered."""


class DeclaredSizeError(FormatError):
    """The header declares a size beyond the limits (refused before allocating anything)."""


class UnknownMethodError(FormatError):
    """The header names a method id this build does not know."""


class UnknownCodecError(FormatError):
    """A layer names a codec id this build does not know."""


class LayerError(FormatError):
    """The layers present do not match what the method requires, or a layer fails to decode."""


# --- models ---------------------------------------------------------------------------------
class ModelError(SemlicError):
    """A model file or configuration that cannot be used."""

    exit_code = 5


class FingerprintMismatchError(ModelError, FormatError):
    """The file was made with other model weights than the ones loaded for decoding."""

    exit_code = 5


class CheckpointError(ModelError):
    """A checkpoint that is missing, corrupt, or made for another architecture."""


# --- configuration --------------------------------------------------------------------------
class ConfigError(SemlicError):
    """A configuration value that is missing or out of range."""

    exit_code = 2


class CodecUnavailableError(SemlicError):
    """A codec whose Pillow plugin is not installed."""

    exit_code = 6
