"""Parity of :class:`faceparse.models.farl.FaRLParser` with facer's way of calling a FaRL face parser.

facer (github.com/FacePerceiver/facer, ``facer/face_parsing/farl.py``) calls the scripted network on
the warped face crop as ``seg_logits, _ = net(images)`` with ``images = uint8 / 255`` (no mean/std).
This script converts a TorchScript file with ``faceparse.models.farl.convert_farl``, loads the folder
back with ``faceparse.load_model`` and compares, on random 448 x 448 uint8 crops:

- faceparse: the crop normalised as faceparse's predictor does (``/255``, then the model's
  ``input_mean``/``input_std`` from config.json), ``model(x)``;
- facer's path written out here: ``net(uint8 / 255)[0]``, resized bilinearly (``align_corners=False``)
  to the crop size when the network answers at another size (FaRL's answers at 512 x 512).

Without ``--file`` a stand-in TorchScript network with facer's interface is used (resize to 448,
normalise inside, a small conv head, logits at 512 x 512, ``(logits, {})``); with ``--file`` the real
release (``face_parsing.farl.lapa.main_ema_136500_jit191.pt`` or
``face_parsing.farl.celebm.main_ema_181500_jit.pt``, obtained by the user) is compared instead.

    python benchmarks/farl_parity.py --out benchmarks/results/farl_parity.md
    python benchmarks/farl_parity.py --file face_parsing.farl.lapa.main_ema_136500_jit191.pt
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _reference_repo import machine, today

TOL = 1e-4
warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)


class StandIn(nn.Module):
    """facer's interface: RGB in [0, 1] -> (logits at 512 x 512, {}), normalisation inside."""

    def __init__(self, num_classes: int = 11) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 16, stride=16)
        self.head = nn.Conv2d(32, num_classes, 1)
        self.register_buffer("mean", torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1))

    def forward(self, image: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        x = F.interpolate(image, size=(448, 448), mode="bilinear", align_corners=False)
        logits = self.head(torch.relu(self.stem((x - self.mean) / self.std)))
        aux: dict[str, Tensor] = {}
        return F.interpolate(logits, size=(512, 512), mode="bilinear", align_corners=False), aux


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--file", type=Path, help="a real facer FaRL TorchScript file (default: a stand-in)")
    ap.add_argument("--label-set", default=None, help="for --file: lapa or celebm (default: from its name)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="write the Markdown result here")
    args = ap.parse_args()

    import faceparse
    from faceparse.models.farl import convert_farl, load_torchscript, match_farl

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.file is None:
            torch.manual_seed(args.seed)
            src = tmp / "face_parsing.farl.lapa.standin.pt"
            torch.jit.save(torch.jit.script(StandIn().eval()), str(src))
            what = "stand-in TorchScript network with facer's interface (11 classes, logits at 512 x 512)"
        else:
            src = args.file
            what = f"`{src.name}` (the user's facer release)"
        ok, why = match_farl(src)
        convert_farl(src, tmp / "out", label_set=args.label_set)
        model = faceparse.load_model(tmp / "out")
        net = load_torchscript(src)
        size = model.default_input_size
        g = torch.Generator().manual_seed(args.seed + 1)
        crops = torch.randint(0, 256, (args.batch, 3, size, size), dtype=torch.uint8, generator=g)
        with torch.no_grad():
            ref_raw = net(crops.float() / 255.0)[0]  # facer: seg_logits, _ = self.net(images)
            mean = torch.tensor(model.input_mean).view(1, 3, 1, 1)
            std = torch.tensor(model.input_std).view(1, 3, 1, 1)
            ours = model((crops.float() / 255.0 - mean) / std)
        ref = ref_raw
        if ref.shape[-2:] != ours.shape[-2:]:
            ref = F.interpolate(ref_raw, size=ours.shape[-2:], mode="bilinear", align_corners=False)
    diff = (ours - ref).abs().max().item()
    agree = (ours.argmax(1) == ref.argmax(1)).float().mean().item()
    passed = ok and diff <= TOL
    cmd = "python benchmarks/farl_parity.py" + (f" --file {args.file.name}" if args.file else "")
    lines = [
        "# FaRL (facer TorchScript) wrapper parity",
        "",
        f"Date: {today()}. Machine: {machine()}. Run time {time.perf_counter() - t0:.0f} s.",
        "",
        f"Command: `{cmd} --out benchmarks/results/farl_parity.md`",
        "",
        f"Network: {what}. Reference: facer's call of the scripted network as written in "
        "github.com/FacePerceiver/facer `facer/face_parsing/farl.py` (`unify_image_dtype`: uint8 / 255; "
        "`seg_logits, _ = self.net(images)`), re-implemented in this script, not imported.",
        "",
        f"Input {args.batch} x 3 x {size} x {size} random uint8 crops, seed {args.seed}; faceparse side: "
        "`convert_farl` -> folder -> `faceparse.load_model` -> `model((crop / 255 - input_mean) / input_std)`; "
        f"tolerance max |difference| <= {TOL}.",
        "",
        "| network output | faceparse output | label set | warp | max abs diff | argmax agreement | status |",
        "|---|---|---|---|---:|---:|---|",
        f"| {tuple(ref_raw.shape)} | {tuple(ours.shape)} | {model.label_set.name} | {model.warp} "
        f"(factor {model.warp_factor}) | {diff:.2e} | {agree:.4%} | {'ok' if passed else 'FAIL'} |",
        "",
        f"`match_farl` on the file: {ok}: {why}",
        "",
    ]
    if args.file is None:
        lines += [
            "What this shows: faceparse feeds the network what facer feeds it (RGB in [0, 1], mean 0 / std 1 "
            "recorded in config.json), takes the first element of its tuple, resizes only when the network "
            "answers at another size, and survives `torch.jit.save` -> folder -> `load_model` unchanged "
            "(difference 0: the same TorchScript graph runs on the same input). The same comparison runs in CI "
            "(`tests/models/test_farl.py::test_parity_with_facer_preprocessing`).",
            "",
            "What it cannot show without the real files (no download here): that facer's releases "
            "(`face_parsing.farl.lapa.main_ema_136500_jit191.pt`, `face_parsing.farl.celebm.main_ema_181500_jit.pt`) "
            "load with this torch and run on the CPU, their output size (FaRL's configs say 512 x 512), and "
            "their class counts (11 / 19, checked by `convert_farl` when it runs the file once). The label "
            "orders are checked against FaRL's dataset code instead (`test_label_sets_follow_farl_dataset_orders`). "
            "End to end (detector, five landmarks, tanh warp and its inverse) is the front end's part: facer "
            "samples the logits back into the image with `grid_sample`, faceparse resizes them to the crop "
            "first. Rerun with `--file` on a release to compare the real network.",
            "",
        ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
