"""Mask-FPAN's de-occlusion module (DOM): a robust LSTM auto-encoder (Li et al. 2023, Sec. III-B,
Fig. 6, after Zhao et al., "Robust LSTM-autoencoders for face de-occlusion in the wild", TIP 2017).

Written by hand (no library provides it):

* the occluded face ``X_occ`` (B x 3 x S x S, values in [0, 1]) is cut into a G x G grid of
  patches per scale (``grids``, multi-scale: 8 x 8 and 4 x 4 by default);
* each scale's patches go through a **spatial (2D) LSTM**: the cell at (i, j) reads its patch
  embedding and the hidden/cell states of its upper (i-1, j) and left (i, j-1) neighbours, with one
  forget gate per neighbour; the last cell's hidden state of every scale, concatenated and
  projected, is the face representation;
* a **dual-channel LSTM decoder** unrolls over the finest grid's patches in raster order: the face
  branch emits each patch of the reconstruction ``X_rec``, the parallel occlusion branch emits the
  occlusion logits of each patch's pixels, ``p = sigmoid(logits)``;
* the output is ``(1 - p) X_occ + p X_rec`` and the training loss is Eq. 1 (squared error to the
  occlusion-free face) plus a binary cross-entropy of ``p`` against the synthetic occlusion mask
  (the pairs come from :mod:`faceparse.data.maskfpan_occlusion`).

faceparse adds one option the paper does not describe: ``skip=True`` (default) also feeds each
decoder step the finest encoder's hidden state at that patch, which localises occluders far better
than the single representation vector; ``skip=False`` is the paper's bottleneck. The DOM's
``predict_occlusion`` gives the occlusion mask for occluded faces without occlusion labels (the
semi-supervised path of Mask-FPAN).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from faceparse.models.base import PretrainedModule
from faceparse.registry import AUX_MODELS


def to_patches(x: torch.Tensor, grid: int) -> torch.Tensor:
    """B x C x S x S -> B x (grid*grid) x (C * (S/grid)^2), raster order."""
    b, c, h, w = x.shape
    ph, pw = h // grid, w // grid
    p = x.reshape(b, c, grid, ph, grid, pw).permute(0, 2, 4, 1, 3, 5)
    return p.reshape(b, grid * grid, c * ph * pw)


def from_patches(p: torch.Tensor, grid: int, channels: int, size: int) -> torch.Tensor:
    """Inverse of :func:`to_patches`."""
    b = p.shape[0]
    ps = size // grid
    x = p.reshape(b, grid, grid, channels, ps, ps).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, channels, size, size)


class SpatialLSTM(nn.Module):
    """2D LSTM over a G x G grid: cell (i, j) sees its input and the states of (i-1, j), (i, j-1).

    Gates: input, output, candidate, and one forget gate per neighbour
    (``c = f_up * c_up + f_left * c_left + i * g``, ``h = o * tanh(c)``).
    Returns the hidden states of every cell (B x G*G x H, raster order).
    """

    def __init__(self, in_dim: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.gates = nn.Linear(in_dim + 2 * hidden, 5 * hidden)

    def forward(self, x: torch.Tensor, grid: int) -> torch.Tensor:
        b = x.shape[0]
        zero = x.new_zeros(b, self.hidden)
        hs: list[list[torch.Tensor]] = [[zero] * grid for _ in range(grid)]
        cs: list[list[torch.Tensor]] = [[zero] * grid for _ in range(grid)]
        for i in range(grid):
            for j in range(grid):
                h_up, c_up = (hs[i - 1][j], cs[i - 1][j]) if i else (zero, zero)
                h_left, c_left = (hs[i][j - 1], cs[i][j - 1]) if j else (zero, zero)
                z = self.gates(torch.cat([x[:, i * grid + j], h_up, h_left], dim=1))
                ig, og, gg, f_up, f_left = z.chunk(5, dim=1)
                c = torch.sigmoid(f_up) * c_up + torch.sigmoid(f_left) * c_left + torch.sigmoid(ig) * torch.tanh(gg)
                hs[i][j] = torch.sigmoid(og) * torch.tanh(c)
                cs[i][j] = c
        return torch.stack([hs[i][j] for i in range(grid) for j in range(grid)], dim=1)


class DeOcclusionNet(PretrainedModule):
    """Robust LSTM auto-encoder with a parallel occlusion branch (Mask-FPAN DOM).

    ``forward(x)`` with ``x`` B x 3 x S x S in [0, 1] (S = ``image_size``; other sizes are resized)
    returns ``{"output": (1 - p) x + p rec, "reconstruction": rec, "occlusion_logits": B x 1 x S x S,
    "occlusion_prob": p}``. ``save_pretrained(dir)`` / ``faceparse.load_model(dir)`` round-trip it as
    config.json + model.safetensors.

    Args:
        image_size: working resolution S (divisible by every grid).
        grids: patch grids of the multi-scale encoder, finest first.
        embed: patch embedding width.
        hidden: LSTM width.
        skip: feed the decoder the finest encoder state of each patch (see the module docstring).
    """

    def __init__(
        self,
        image_size: int = 64,
        grids: Sequence[int] = (8, 4),
        embed: int = 128,
        hidden: int = 256,
        skip: bool = True,
    ) -> None:
        super().__init__()
        grids = [int(g) for g in grids]
        if any(image_size % g for g in grids):
            raise ValueError(f"image_size {image_size} must be divisible by every grid {grids}")
        self.image_size, self.grids, self.skip = image_size, grids, skip
        self.embeds = nn.ModuleList([nn.Linear(3 * (image_size // g) ** 2, embed) for g in grids])
        self.encoders = nn.ModuleList([SpatialLSTM(embed, hidden) for _ in grids])
        self.represent = nn.Linear(hidden * len(grids), hidden)
        g0 = grids[0]
        self.pos = nn.Parameter(torch.zeros(1, g0 * g0, embed))
        nn.init.normal_(self.pos, std=0.02)
        dec_in = hidden + embed + (hidden if skip else 0)
        self.face_decoder = nn.LSTM(dec_in, hidden, batch_first=True)
        self.occ_decoder = nn.LSTM(dec_in, hidden, batch_first=True)
        patch = (image_size // g0) ** 2
        self.face_out = nn.Linear(hidden, 3 * patch)
        self.occ_out = nn.Linear(hidden, patch)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = self.image_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        states, finals = None, []
        for k, (g, emb, enc) in enumerate(zip(self.grids, self.embeds, self.encoders)):
            h = enc(torch.relu(emb(to_patches(x, g))), g)
            finals.append(h[:, -1])
            if k == 0:
                states = h
        rep = torch.tanh(self.represent(torch.cat(finals, dim=1)))
        g0 = self.grids[0]
        steps = g0 * g0
        dec_in = [rep[:, None].expand(-1, steps, -1), self.pos.expand(x.shape[0], -1, -1)]
        if self.skip:
            dec_in.append(states)
        dec_in = torch.cat(dec_in, dim=2)
        face, _ = self.face_decoder(dec_in)
        occ, _ = self.occ_decoder(dec_in)
        rec = torch.sigmoid(from_patches(self.face_out(face), g0, 3, size))
        logits = from_patches(self.occ_out(occ), g0, 1, size)
        p = torch.sigmoid(logits)
        return {"output": (1 - p) * x + p * rec, "reconstruction": rec, "occlusion_logits": logits, "occlusion_prob": p}

    @torch.no_grad()
    def predict_occlusion(
        self, x: torch.Tensor, threshold: float = 0.5, size: Sequence[int] | None = None
    ) -> torch.Tensor:
        """Binary occlusion mask (B x H x W, int64) for images in [0, 1], at ``size`` (default: x's)."""
        out_size = tuple(size) if size is not None else tuple(x.shape[-2:])
        p = self(x)["occlusion_prob"]
        p = F.interpolate(p, size=out_size, mode="bilinear", align_corners=False)
        return (p[:, 0] > threshold).long()


@AUX_MODELS.register("mfpan_dom", paper="Mask-FPAN DOM (robust LSTM auto-encoder)", input_size=64)
def mfpan_dom(**kwargs: Any) -> DeOcclusionNet:
    """Mask-FPAN de-occlusion module."""
    return DeOcclusionNet(**kwargs)
