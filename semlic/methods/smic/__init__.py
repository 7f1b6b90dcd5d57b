"""SMIC (Wei, Liao, Bai & Zhao, PRCV 2020): a lossy semantic map and a downsampled image, rebuilt by a cGAN.

* :mod:`.networks`: SS-Net (model ``smic_ssnet``: image -> map drawn in palette colours),
  Rec-Net (model ``smic_recnet``: U-Net with residual blocks), discriminators D1 and D2;
* :mod:`.codec`: the codec, registered as method ``smic`` (quality: downsampling factor and
  the map's HEVC QP);
* :mod:`.training`: SS-Net and Rec-Net training (cGAN, L1, VGG);
* :mod:`.commands`: ``semlic train-smic``.

The map is drawn as an image, as in the paper's pix2pix lineage: SS-Net outputs colours, each
pixel is snapped to the nearest palette colour (one distinct colour per class, black for
void) and the colour image is coded with HEVC. A class-index map would not survive lossy
coding (indices are not ordered: a QP's rounding turns one class into an unrelated one),
while the decoded colours degrade gracefully and Rec-Net takes them as they are; the labels,
when wanted (mIoU), are the nearest palette colours.
"""

from .codec import SMICCodec, downsample, parse_quality, upsample
from ...lazy import lazy_exports
from ...model_files import declare_models

# the networks (torch) are imported when first used: `semlic methods` and `semlic info` run without them
declare_models(__name__, {"smic_ssnet": ".networks", "smic_recnet": ".networks"})
__getattr__, __dir__ = lazy_exports(__name__, {"PRESETS": ".networks", "RecNet": ".networks", "RecNetConfig": ".networks", "SSNet": ".networks", "SSNetConfig": ".networks", "default_palette": ".networks", "recnet_config": ".networks", "ssnet_config": ".networks"})


def register_cli(sub) -> None:
    from .commands import register_cli as register

    register(sub)


__all__ = ["PRESETS", "RecNet", "RecNetConfig", "SMICCodec", "SSNet", "SSNetConfig", "default_palette", "downsample",
           "parse_quality", "recnet_config", "register_cli", "ssnet_config", "upsample"]
