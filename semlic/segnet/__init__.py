"""The segmentation network of DSSLIC and EDMS: PSPNet (Zhao et al., CVPR 2017).

Modules, one concept each:

* :mod:`.backbone` dilated ResNet trunk (torchvision layout); :mod:`.pspnet` the network, its
  config and loss;
* :mod:`.pretrained` torchvision, CSAILVision and hszhao/semseg weights from local files (the
  model files themselves: :mod:`semlic.model_files`, model ``pspnet``);
* :mod:`.metrics` confusion matrix, IoU, accuracies;
* :mod:`.prepared` reading prepared data sets, :mod:`.augment` training augmentation,
  :mod:`.schedule` batch plan and learning rate, :mod:`.train_config`, :mod:`.train` the
  training task (on :mod:`semlic.train_loop`);
* :mod:`.inference`, :mod:`.evaluate`, :mod:`.segment` running a trained model;
* :mod:`.commands` the ``train-segnet``, ``segment`` and ``convert-segnet`` commands.

Importing the package declares the network (model ``pspnet``) without importing torch; its names
(the network, inference, metrics) import their module when first used; training is imported from
:mod:`.train` only by what trains (a decoder does not load training code).
"""

from ..lazy import lazy_exports
from ..model_files import declare_models

# the network (torch) is imported when first used: `semlic methods` and `semlic info` run without it
declare_models(__name__, {"pspnet": ".pspnet"})
__getattr__, __dir__ = lazy_exports(__name__, {
    "predict_labels": ".inference", "SegmentationScores": ".metrics", "confusion_matrix": ".metrics",
    "scores_from_confusion": ".metrics", "PRESETS": ".pspnet", "PSPNet": ".pspnet", "PSPNetConfig": ".pspnet",
    "pspnet_config": ".pspnet", "pspnet_loss": ".pspnet"})

__all__ = [
    "PRESETS", "PSPNet", "PSPNetConfig", "pspnet_config", "pspnet_loss",
    "confusion_matrix", "scores_from_confusion", "SegmentationScores", "predict_labels",
]
