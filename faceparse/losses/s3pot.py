"""S3POT prompt losses (paper Sec. 3.3, "Objective Function Design", Eq. 1-4).

With ``q`` the predicted occlusion probability (``sigmoid`` of the mask logit) at a prompt point,
``N_o`` occlusion prompts and ``N_f`` face prompts:

- Eq. 1, occlusion prompt recall (OPR): ``L_recall_occ = -1/N_o sum_j log q_j``
- Eq. 2, face prompt recall (FPR): ``L_recall_face = 1/N_f sum_i log q_i``
- Eq. 3, face prompt penalty (FPP): ``L_face_penalty = 1/N_f sum_i sigmoid(alpha (q_i - 0.5))``
- Eq. 4: ``L_total = L_recall_face + L_recall_occ + lambda L_face_penalty``; alpha = 10, lambda = 0.5.

Terms are computed per image and averaged over the batch; an image without prompts of a kind
contributes 0 to that term. ``log q`` is clamped at ``log(eps)`` (FPR is unbounded below otherwise).
A batch without any valid prompt gives a zero loss that is still connected to the logits (its
``backward()`` works and gives zero gradients). Probabilities are computed in float32.

Where the public code (github.com/Bh-Johnny/S3SPOT, ``train_General_Training.py``) differs from the
paper, faceparse follows the paper: the public code labels *face* prompts positive (SAM label 1) and
occlusion prompts negative, uses ``p = sigmoid(10 * logit)`` and linear terms instead of logs
(``-mean p_face + mean p_occ``), and a hinge ``relu(0.5 - p_face)`` instead of Eq. 3's sigmoid, with
weight 0.5. ``PromptLoss`` implements Eq. 1-4 on the occlusion probability as written.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from faceparse.registry import LOSSES


def prompt_loss_terms(
    q_occ: torch.Tensor,
    q_face: torch.Tensor,
    alpha: float = 10.0,
    lam: float = 0.5,
    eps: float = 1e-6,
) -> dict[str, torch.Tensor]:
    """Eq. 1-4 for one image from the probabilities at its occlusion and face prompts (1-D)."""
    zero = q_occ.new_zeros(()) if q_occ.numel() else q_face.new_zeros(())
    log_occ = torch.log(q_occ.clamp_min(eps))
    log_face = torch.log(q_face.clamp_min(eps))
    recall_occ = -log_occ.mean() if q_occ.numel() else zero
    recall_face = log_face.mean() if q_face.numel() else zero
    penalty = torch.sigmoid(alpha * (q_face - 0.5)).mean() if q_face.numel() else zero
    return {
        "loss": recall_face + recall_occ + lam * penalty,
        "recall_occ": recall_occ,
        "recall_face": recall_face,
        "face_penalty": penalty,
    }


def occlusion_logit_of(outputs: torch.Tensor | dict[str, Any]) -> torch.Tensor:
    """``B x 1 x H x W`` occlusion logit: ``occlusion_logits`` or ``logits[:, 1] - logits[:, 0]``."""
    if isinstance(outputs, dict) and "occlusion_logits" in outputs:
        return outputs["occlusion_logits"]
    logits = outputs["logits"] if isinstance(outputs, dict) else outputs
    return (logits[:, 1] - logits[:, 0])[:, None]


@LOSSES.register("s3pot_prompt")
class PromptLoss(nn.Module):
    """S3POT's self-supervised loss (Eq. 4 = FPR + OPR + lambda FPP) at the selected prompts.

    ``outputs`` is :meth:`faceparse.models.s3pot.model.S3POT.forward_train`'s dict: ``occlusion_logits``
    (or 2-class ``logits``), ``occlusion_points`` / ``face_points`` (``B x P x 2`` integer
    ``(x, y)`` pixels) and ``occlusion_valid`` / ``face_valid`` (``B x P`` bool). ``batch`` is not
    used (no occlusion labels). Returns ``{"loss", "recall_occ", "recall_face", "face_penalty"}``.

    Args:
        alpha: steepness of the face penalty sigmoid (paper: 10).
        lam: weight of the face penalty (paper: 0.5).
        eps: probability floor inside the logs.
    """

    def __init__(self, alpha: float = 10.0, lam: float = 0.5, eps: float = 1e-6) -> None:
        super().__init__()
        self.alpha, self.lam, self.eps = alpha, lam, eps

    def forward(self, outputs: dict[str, Any], batch: dict | None = None) -> dict[str, torch.Tensor]:
        prob = torch.sigmoid(occlusion_logit_of(outputs)[:, 0].float())  # B x H x W
        parts: dict[str, list[torch.Tensor]] = {}
        for b in range(prob.shape[0]):
            q = []
            for key in ("occlusion", "face"):
                pts = outputs[f"{key}_points"][b][outputs[f"{key}_valid"][b]]
                q.append(prob[b, pts[:, 1], pts[:, 0]])
            terms = prompt_loss_terms(q[0], q[1], self.alpha, self.lam, self.eps)
            for k, v in terms.items():
                parts.setdefault(k, []).append(v)
        out = {k: torch.stack(v).mean() for k, v in parts.items()}
        if not out["loss"].requires_grad and prob.requires_grad:
            # no valid prompt anywhere: every term is a constant 0; tie it to the logits so that
            # backward() works (zero gradients) instead of raising
            out["loss"] = out["loss"] + prob.sum() * 0.0
        return out


__all__ = ["PromptLoss", "prompt_loss_terms", "occlusion_logit_of"]
