"""DisFaceRep's multi-class-token ViT (after MCTformer) with its class-activation maps and text encoders.

``model``: the network; ``cam``: class-to-patch attention maps, FCAMs and pseudo masks;
``text``: the frozen vision-language encoders of the text-guided loss. The loss is
:mod:`faceparse.losses.disfacerep`, the task :mod:`faceparse.tasks.weakly`, the data
:mod:`faceparse.data.disfacerep_ccd` and :mod:`faceparse.data.disfacerep_pseudo_masks`.
"""

from typing import TYPE_CHECKING

from faceparse._autoimport import lazy_exports

if TYPE_CHECKING:
    from faceparse.models.mct_vit.model import MCTViT

__all__ = ["MCTViT"]
__getattr__, __dir__ = lazy_exports(__name__, {"MCTViT": "faceparse.models.mct_vit.model"})
