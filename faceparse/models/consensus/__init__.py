"""Structure via Consensus (Masi et al.): the encoder-decoder and its official-checkpoint converter.

Its loss is :mod:`faceparse.losses.consensus`, its pseudo-labels :mod:`faceparse.data.consensus_pseudo`,
its evaluation protocol :func:`faceparse.evaluate.evaluate_consensus`.
"""

from typing import TYPE_CHECKING

from faceparse._autoimport import lazy_exports

if TYPE_CHECKING:
    from faceparse.models.consensus.model import ConsensusNet, official_state_dict

__all__ = ["ConsensusNet", "official_state_dict"]
__getattr__, __dir__ = lazy_exports(
    __name__,
    {"ConsensusNet": "faceparse.models.consensus.model", "official_state_dict": "faceparse.models.consensus.model"},
)
