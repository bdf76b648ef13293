"""The image tower of an image–text model: a ``transformers`` vision model, mean-pooled over its spatial or patch
tokens, with the image processor that turns pictures into its input.

Either any vision model folder a user has (CLIP vision, ViT, ConvNeXt, ...: ``AutoModel`` and
``AutoImageProcessor`` from the folder, never downloaded), or the built-in tower: a small ConvNeXt (Liu et al., "A
ConvNet for the 2020s", CVPR 2022) initialised at random and trained from scratch, with a processor that resizes every
picture to ``image_size`` × ``image_size`` (no crop: a stamp or an emoji is seen whole) and scales it to [-1, 1].

The pooled vector is the mean of the model's ``last_hidden_state`` over its tokens (a ConvNeXt's (B, C, H, W) map is
H·W tokens), exactly what sentence-transformers' ``Transformer`` + mean ``Pooling`` compute for an image, so an
exported model gives the same vectors in both (fastemb/model/image_text.py).
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

BUILTIN = "builtin"


def builtin_vision(image_size: int, widths: Sequence[int], depths: Sequence[int]) -> tuple[nn.Module, object]:
    """A randomly initialised ConvNeXt (stage widths and depths given) and its processor (resize to a square of
    ``image_size``, scale to [-1, 1]). Seed torch before calling for a reproducible initialisation."""
    from transformers import ConvNextConfig, ConvNextModel

    if len(widths) != len(depths):
        raise ValueError(f"widths {list(widths)} and depths {list(depths)} must have the same length")
    config = ConvNextConfig(num_channels=3, num_stages=len(widths), hidden_sizes=list(widths), depths=list(depths),
                            image_size=image_size)
    return ConvNextModel(config), square_processor(image_size)


def square_processor(image_size: int):
    """The built-in tower's processor: RGB resized (bicubic) to ``image_size``², rescaled and normalised to
    [-1, 1]."""
    from transformers import ViTImageProcessorPil  # the PIL backend: the same pixels with or without torchvision

    return ViTImageProcessorPil(size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3,
                             image_std=[0.5] * 3, do_convert_rgb=True)


def load_vision(path: str | Path) -> tuple[nn.Module, object]:
    """A vision model folder's model and processor (local files only)."""
    from transformers import AutoImageProcessor, AutoModel

    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"vision model {str(path)!r}: not a transformers model folder (no config.json); "
                                "fastemb never downloads models, give a local folder or 'builtin'")
    if not (folder / "preprocessor_config.json").is_file():
        raise FileNotFoundError(f"vision model {str(path)!r}: no preprocessor_config.json (the image processor "
                                "that resizes and normalises its input)")
    return (AutoModel.from_pretrained(folder, local_files_only=True),
            AutoImageProcessor.from_pretrained(folder, local_files_only=True))


def vision_width(vision: nn.Module) -> int:
    """The width of a vision model's last hidden state (a ConvNeXt's last stage, a ViT's hidden size)."""
    cfg = vision.config
    cfg = getattr(cfg, "vision_config", cfg)
    sizes = getattr(cfg, "hidden_sizes", None)
    return int(sizes[-1] if sizes else cfg.hidden_size)


def pixel_values(processor, images: list) -> np.ndarray:
    """The processor's float32 input (n, 3, H, W) of PIL images."""
    return np.asarray(processor(images=images, return_tensors="np")["pixel_values"], dtype=np.float32)


class ImageTower(nn.Module):
    """A vision model mean-pooled over its tokens: pixels (B, 3, H, W) → (B, width)."""

    def __init__(self, vision: nn.Module):
        super().__init__()
        self.vision = vision

    @property
    def dim(self) -> int:
        return vision_width(self.vision)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        hidden = self.vision(pixel_values=pixels).last_hidden_state
        if hidden.dim() == 4:  # a convolutional map (B, C, H, W): H·W tokens
            hidden = hidden.flatten(2).transpose(1, 2)
        return hidden.mean(dim=1)


@functools.lru_cache(maxsize=4)
def image_processor(vision: str, image_size: int):
    """The processor of ``vision`` (``builtin``: the square one at ``image_size``; a folder: its own), made once per
    process: every decoding batch of a Ray Data task asks for it."""
    if vision == BUILTIN:
        return square_processor(image_size)
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(Path(vision).expanduser(), local_files_only=True)
