"""semlic: semantic-segmentation-based image compression, measured honestly.

Layers: this package is the library (torch, numpy, Pillow; no Prefect or Ray);
``tasks/`` and ``flows/`` wrap it for the pipeline. See README.md.
"""

__version__ = "0.1.0"

# Method ids, used everywhere (file format, Parquet rows, CLI).
METHODS = {
    "dsslic": 1,
    "edms": 2,
    "edms_noenh": 3,
    "smic": 4,
    "jpeg": 16,
    "jpeg2000": 17,
    "webp": 18,
    "hevc": 19,
    "avif": 20,
    "jxl": 21,
}
