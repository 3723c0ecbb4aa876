"""The digits classifier as a PyTorch factory: `source: {format: pytorch, path: net.py:make_model}`.

An MLP over the 8x8 images of scikit-learn's digits (64 pixel values 0..16 in, 10 logits out), trained by
train.py; the weights are digits_mlp.pt beside this file.
"""

from pathlib import Path

import torch
from torch import nn

WEIGHTS = Path(__file__).with_name("digits_mlp.pt")


class DigitsMLP(nn.Module):
    def __init__(self, hidden: int = 128):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                    nn.Linear(hidden, 10))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.layers(pixels / 16.0)   # raw 0..16 pixel values in: clients send what the images hold


def make_model() -> nn.Module:
    net = DigitsMLP()
    net.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
    return net.eval()
