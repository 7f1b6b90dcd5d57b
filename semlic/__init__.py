"""semlic: semantic-segmentation-based image compression, measured honestly.

Layers: this package is the library (torch, numpy, Pillow; no Prefect or Ray);
``semlic.pipeline`` holds the stages; ``flows/`` runs them with Prefect and Ray. See README.md.

* the core knows no method by name: the file format (:mod:`.format`), image codecs
  (:mod:`.image_codecs`), layered-coding helpers (:mod:`.layers`), metrics and Bjontegaard
  deltas, the results schema, data sets (:mod:`.data`), the training loop
  (:mod:`.train_loop`), model files and their loader (:mod:`.model_files`), the CLI;
* :mod:`.methods` holds one package per system (DSSLIC, EDMS, ...), registered by name;
* :mod:`.segnet` is the segmentation network the methods share (PSPNet).
"""

__version__ = "0.1.0"
