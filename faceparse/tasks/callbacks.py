"""Lightning callbacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytorch_lightning as pl


class SavePretrained(pl.Callback):
    """Save the task's model with ``save_pretrained`` (config.json + model.safetensors) after fit.

    The directory can then be used with ``faceparse.load_model`` and ``faceparse predict --model``.
    """

    def __init__(self, dirpath: str = "runs/model") -> None:
        self.dirpath = Path(dirpath)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            pl_module.model.save_pretrained(self.dirpath)
            warp = training_warp(trainer)
            if warp is not None:  # Predictor(align="auto") then crops faces the way training did
                config = self.dirpath / "config.json"
                data = json.loads(config.read_text())
                data["warp"] = warp
                config.write_text(json.dumps(data, indent=2) + "\n")
            print(f"saved model to {self.dirpath}" + (f" (trained on '{warp}'-aligned faces)" if warp else ""))


def training_warp(trainer: pl.Trainer) -> str | None:
    """The face geometry of the training data: ``"tanh"`` / ``"similarity"`` when the data module's
    dataset aligns faces (``dataset_kwargs.align``), else ``None`` (not recorded)."""
    kwargs = getattr(getattr(trainer, "datamodule", None), "dataset_kwargs", None) or {}
    align = kwargs.get("align")
    if align == "tanh":
        return "tanh"
    if align is True or align == "similarity":
        return "similarity"
    return None
