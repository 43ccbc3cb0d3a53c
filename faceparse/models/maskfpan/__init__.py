"""Mask-FPAN's model-side pieces: the landmark-occlusion module (LOM) with its pose head, the
de-occlusion module (DOM) and head-pose targets. The parsing network is RTFormer
(:mod:`faceparse.models.rtformer`); the losses are :mod:`faceparse.losses.maskfpan`, the task
:mod:`faceparse.tasks.maskfpan`, the occlusion synthesis :mod:`faceparse.data.maskfpan_occlusion`.
"""

from typing import TYPE_CHECKING

from faceparse._autoimport import lazy_exports

if TYPE_CHECKING:
    from faceparse.models.maskfpan.deocclusion import DeOcclusionNet
    from faceparse.models.maskfpan.landmarks import LandmarkOcclusionNet

__all__ = ["DeOcclusionNet", "LandmarkOcclusionNet"]
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "DeOcclusionNet": "faceparse.models.maskfpan.deocclusion",
        "LandmarkOcclusionNet": "faceparse.models.maskfpan.landmarks",
    },
)
