"""Lightning callbacks."""

from __future__ import annotations

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
            print(f"saved model to {self.dirpath}")
