"""A tiny random Grounding DINO checkpoint folder, built offline, for the `boxes ground` tests."""

from __future__ import annotations

from pathlib import Path

import torch

# WordPiece vocabulary: BERT's special tokens and the words of the DisFaceRep prompt
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "nose", "eye", "eyebrow", "ear", "mouth", "a", "face"]


def save_tiny_grounding_dino(folder: Path) -> Path:
    """A random Grounding DINO (Swin + BERT, a few thousand parameters per part, seed 0) with a
    WordPiece tokenizer from a vocabulary file, saved into ``folder`` as transformers ships one.

    The processor works at 128 px: at 64 the Swin's last level is 1 x 1 and GroupNorm fails."""
    from transformers import (
        BertConfig,
        BertTokenizerFast,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    tok = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)
    size = {"shortest_edge": 128, "longest_edge": 128}
    proc = GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(size=size), tokenizer=tok)
    swin = SwinConfig(
        embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=2, image_size=128,
        out_features=["stage2", "stage3", "stage4"],
    )  # fmt: skip
    bert = BertConfig(
        vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=64,
    )  # fmt: skip
    cfg = GroundingDinoConfig(
        backbone_config=swin, text_config=bert, d_model=32, encoder_layers=1, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        num_queries=10, encoder_n_points=1, decoder_n_points=1, max_text_len=32,
    )  # fmt: skip
    torch.manual_seed(0)
    GroundingDinoForObjectDetection(cfg).eval().save_pretrained(folder)
    proc.save_pretrained(folder)
    return folder
