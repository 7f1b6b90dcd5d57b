"""Segmentation in the learned compressed domain (Liu, Sun & Katto, 2022), on CompressAI's hyperprior.

* :mod:`.hyperprior`: the learned codec (model ``hyperprior``: a bank of CompressAI
  ``bmshj2018-hyperprior`` codecs, one per quality, with their entropy tables), its training
  (CompressAI's examples/train.py recipe) and the import of a local CompressAI checkpoint;
* :mod:`.codec`: the method ``hyperprior`` (an image codec in the rate-distortion table) and
  its file, scalable by latent channel: hyper + task layers are what segmentation needs, the
  rest layer adds the image;
* :mod:`.networks`: DeepLabv3 (model ``deeplabv3``: the pixel-domain model and the teacher)
  and the student (model ``latent_seg``: gate / static selection, Module-Deconv or
  Module-Res, DeepLabv3 without its first two layers);
* :mod:`.training`: the teacher, the students (CE + MSE to the teacher's first two layers),
  static selection from the dynamic gate's counts;
* :mod:`.evaluate`: rate-mIoU rows (pixel domain vs compressed domain), times, MACs;
* :mod:`.commands`: ``semlic train-hyperprior``, ``import-hyperprior``, ``train-latent-seg``,
  ``eval-latent-seg``.
"""

from .codec import HyperpriorCodec
from ...lazy import lazy_exports
from ...model_files import declare_models

# the networks (torch) are imported when first used: `semlic methods` and `semlic info` run without them
declare_models(__name__, {"deeplabv3": ".networks", "latent_seg": ".networks", "hyperprior": ".hyperprior"})
__getattr__, __dir__ = lazy_exports(__name__, {"DeepLabV3": ".networks", "LatentSegNet": ".networks"})


def register_cli(sub) -> None:
    from .commands import register_cli as register
    from .evaluate import register_cli as register_eval

    register(sub)
    register_eval(sub)


__all__ = ["DeepLabV3", "HyperpriorCodec", "LatentSegNet", "register_cli"]
