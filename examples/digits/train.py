#!/usr/bin/env python3
"""Train the digits MLP (net.py) on scikit-learn's digits dataset, which ships inside scikit-learn: no download.

Seeded and full-batch, so a re-run on the same torch writes the same weights (about 2 s on 2 CPU cores).
Writes digits_mlp.pt (the state dict), digits_test.npz (the held-out images and labels the tests and the
bench use), images/NNN.png (the same held-out images as 8-bit grayscale PNG files, pixel = round(v x 255 / 16),
for the image-classification spec), calibration/NNN.png (the first CALIBRATION_IMAGES training images, for INT8
calibration: never the held-out ones) and metrics.json (the held-out accuracy in-process).

    python examples/digits/train.py
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from net import WEIGHTS, DigitsMLP  # noqa: E402

SEED, EPOCHS, LEARNING_RATE, TEST_SHARE = 0, 300, 3e-3, 0.25
CALIBRATION_IMAGES = 128


def write_images(pixels: np.ndarray, folder: Path = HERE / "images") -> None:
    """Each image (64 values 0..16) as an 8x8 grayscale PNG, in order."""
    from PIL import Image
    folder.mkdir(exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    for i, row in enumerate(pixels):
        gray = np.round(row.reshape(8, 8) * 255.0 / 16.0).astype(np.uint8)
        Image.fromarray(gray, mode="L").save(folder / f"{i:03d}.png", optimize=True)


def main() -> None:
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data.astype(np.float32), digits.target.astype(np.int64), test_size=TEST_SHARE,
        random_state=SEED, stratify=digits.target)
    torch.manual_seed(SEED)
    net = DigitsMLP()
    opt = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE, weight_decay=1e-4)
    x, y = torch.from_numpy(x_train), torch.from_numpy(y_train)
    for _ in range(EPOCHS):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        accuracy = float((net(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean())
    torch.save(net.state_dict(), WEIGHTS)
    np.savez_compressed(HERE / "digits_test.npz", pixels=x_test, labels=y_test)
    write_images(x_test)
    write_images(x_train[:CALIBRATION_IMAGES], HERE / "calibration")
    record = {"dataset": "sklearn.datasets.load_digits (1,797 8x8 images, 10 classes)",
              "train": len(y_train), "test": len(y_test), "seed": SEED, "epochs": EPOCHS,
              "final_train_loss": round(float(loss.detach()), 5), "test_accuracy_in_process": round(accuracy, 5),
              "torch": torch.__version__}
    (HERE / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
