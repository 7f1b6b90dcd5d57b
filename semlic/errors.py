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


class ImageTooLargeError(ImageInputError):
    """An input image declares more pixels than the limit (refused before it is decoded)."""


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


class LayerSizeError(DeclaredSizeError, LayerError):
    """A layer's payload declares another size than the header implies, or more pixels than any
    layer may hold: refused before it is decoded (a decompression bomb)."""


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


class LabelMapError(ImageInputError):
    """A label map whose size or values do not fit: values outside 0..num_classes-1 other than
    the ignore index, or a label map whose size differs from its image's."""


# --- data sets ------------------------------------------------------------------------------
class DatasetError(ConfigError):
    """A data set that cannot be listed or read (exit code 2, like any configuration error)."""


class UnknownDatasetError(DatasetError):
    """A data set name or split that is not in the registry (semlic.data.datasets.DATASETS)."""


class DatasetRootError(DatasetError):
    """The data set root directory is missing (or was not given)."""


class DatasetLayoutError(DatasetError):
    """The root exists but is not laid out as the data set's own layout says, or a file in it
    does not match its partner (missing label, image and label of different sizes, label values
    outside the data set's class range)."""


class DownloadError(SemlicError):
    """A download that failed (network error, interrupted transfer, bad archive)."""


class DownloadChecksumError(DownloadError):
    """A downloaded file whose checksum differs from the published one (the file is removed)."""


class ManualDownloadError(DownloadError):
    """A data set that cannot be downloaded automatically (Cityscapes: registration required)."""

    exit_code = 2


class TrailingBytesError(FormatError):
    """Bytes follow the last declared layer: the file was altered or concatenated."""


class ModelMismatchError(ModelError):
    """Models that do not fit together: a segmenter, an enhancer and a base model whose class
    counts differ (EDMS chains PSPNet -> SMapNet -> FineNet over one label set)."""


class MissingModelError(ModelError):
    """A method needs a model that was not given (an EDMS file decodes only with its PSPNet,
    and with its SMapNet for ``edms``)."""


class EntropyModelMismatchError(ModelError):
    """The symbols a decoder entropy-decoded are not those the encoder coded (the file's check of
    them does not match): the decoder computed another probability model than the encoder (other
    model weights, or arithmetic that differs between the two machines). No image is returned."""


class IntegerNetworkError(ModelError):
    """An integer network (semlic.nn.integer) that cannot be built or computed exactly."""


class MissingExtraError(ConfigError):
    """A feature whose optional dependencies are not installed (``pip install semlic[<extra>]``)."""


def import_extra(module: str, extra: str, feature: str):
    """Import an optional dependency, or raise :class:`MissingExtraError` saying how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(f"{feature} needs {module}, which is not installed: pip install 'semlic[{extra}]' "
                                f"({exc})") from exc
