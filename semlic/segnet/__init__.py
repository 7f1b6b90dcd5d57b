"""The segmentation network of DSSLIC and EDMS: PSPNet (Zhao et al., CVPR 2017).

Modules, one concept each:

* :mod:`.backbone` dilated ResNet trunk (torchvision layout); :mod:`.pspnet` the network, its
  config and loss;
* :mod:`.checkpoint` safetensors checkpoints; :mod:`.pretrained` torchvision, CSAILVision and
  hszhao/semseg weights from local files;
* :mod:`.metrics` confusion matrix, IoU, accuracies;
* :mod:`.prepared` reading prepared data sets, :mod:`.augment` training augmentation,
  :mod:`.schedule` batch plan and learning rate, :mod:`.train_config`, :mod:`.train_state`,
  :mod:`.train` the training loop;
* :mod:`.inference`, :mod:`.evaluate`, :mod:`.segment` running a trained model;
* :mod:`.commands` the ``train-segnet``, ``segment`` and ``convert-segnet`` commands.
"""

from .checkpoint import load_segnet, read_segnet_config, save_segnet
from .evaluate import evaluate_segnet
from .inference import predict_labels
from .metrics import SegmentationScores, confusion_matrix, scores_from_confusion
from .pretrained import load_csail_pspnet, load_hszhao_pspnet, load_torchvision_backbone
from .pspnet import PSPNet, PSPNetConfig, pspnet_loss
from .segment import segment_images, segment_split, write_segment_table
from .train import train_segnet
from .train_config import SegnetTrainConfig, load_train_config

__all__ = [
    "PSPNet", "PSPNetConfig", "pspnet_loss",
    "save_segnet", "load_segnet", "read_segnet_config",
    "load_torchvision_backbone", "load_csail_pspnet", "load_hszhao_pspnet",
    "confusion_matrix", "scores_from_confusion", "SegmentationScores",
    "SegnetTrainConfig", "load_train_config", "train_segnet", "evaluate_segnet",
    "predict_labels", "segment_images", "segment_split", "write_segment_table",
]
