"""Structure via Consensus (Masi et al.): the encoder-decoder and its official-checkpoint converter.

Its loss is :mod:`faceparse.losses.consensus`, its pseudo-labels :mod:`faceparse.data.consensus_pseudo`,
its evaluation protocol :func:`faceparse.evaluate.evaluate_consensus`.
"""

from faceparse.models.consensus.model import ConsensusNet, official_state_dict

__all__ = ["ConsensusNet", "official_state_dict"]
