"""S3POT: SAM prompted by occlusion-candidate points found by matching a face with its reference.

``model``: the network, prompt selection and matching; ``references``: reference sources. The loss
is :mod:`faceparse.losses.s3pot`, the task :mod:`faceparse.tasks.s3pot`, the data
:mod:`faceparse.data.s3pot`.
"""

from typing import TYPE_CHECKING

from faceparse._autoimport import lazy_exports

if TYPE_CHECKING:
    from faceparse.models.s3pot.model import S3POT

__all__ = ["S3POT"]
__getattr__, __dir__ = lazy_exports(__name__, {"S3POT": "faceparse.models.s3pot.model"})
