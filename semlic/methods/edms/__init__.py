"""EDMS (Hoang, Zhou & Fan, CVPR workshops 2020): DSSLIC without the segmentation layer.

Encoder and decoder derive the same map from the decoded compact image, s^ = argmax
SMapNet(softmax(PSPNet(up(c^)))), so the file carries no segmentation bits.

* :mod:`.smapnet`: the segmentation enhancer (model ``smapnet``);
* :mod:`.matched`: the matched map both ends compute, its agreement guard;
* :mod:`.codec`: the codecs, registered as methods ``edms`` and ``edms_noenh`` (PSPNet alone);
* :mod:`.pairs`, :mod:`.training`: SMapNet's training pairs and training;
* :mod:`.finetune`: the optional FineNet fine-tune on s^ (step 3);
* :mod:`.commands`: ``semlic smap-pairs``, ``train-smapnet``, ``finetune-finenet``.

Built on :mod:`semlic.methods.dsslic` (its networks and layered codec).
"""

from .codec import AGREEMENT_TAU, EDMSCodec, EDMSWithoutEnhancement, MatchedMapCodec
from ...lazy import lazy_exports
from ...model_files import declare_models

# the networks (torch) are imported when first used: `semlic methods` and `semlic info` run without them
declare_models(__name__, {"smapnet": ".smapnet"})
__getattr__, __dir__ = lazy_exports(__name__, {"SMAPNET_PRESETS": ".smapnet", "SMapNet": ".smapnet", "SMapNetConfig": ".smapnet", "smapnet_config": ".smapnet"})


def register_cli(sub) -> None:
    from .commands import register_cli as register

    register(sub)


__all__ = ["AGREEMENT_TAU", "EDMSCodec", "EDMSWithoutEnhancement", "MatchedMapCodec", "SMAPNET_PRESETS", "SMapNet",
           "SMapNetConfig", "smapnet_config", "register_cli"]
