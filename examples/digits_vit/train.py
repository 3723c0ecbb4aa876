#!/usr/bin/env python3
"""Train a tiny ViT (transformers' ViTForImageClassification) on scikit-learn's digits, which ship inside
scikit-learn: no download. Writes model/ as a Hugging Face folder (config.json with id2label,
model.safetensors, preprocessor_config.json for ViTImageProcessor) and metrics.json.

The split is examples/digits/train.py's, so the held-out images are examples/digits/images/*.png. Training
sees each image as the served pipeline will: the PNG's pixels (round(v x 255 / 16)), scaled by the image
processor (x / 255 - 0.5) / 0.5. Seeded; about 30 s on 2 CPU cores.

    python examples/digits_vit/train.py
"""

import json
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

HERE = Path(__file__).resolve().parent
IMAGES = HERE.parent / "digits" / "images"
SEED, EPOCHS, BATCH, LEARNING_RATE, TEST_SHARE = 0, 60, 64, 2e-3, 0.25
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def main() -> None:
    from PIL import Image
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    digits = load_digits()
    x_train, _, y_train, y_test = train_test_split(
        digits.data.astype(np.float32), digits.target.astype(np.int64), test_size=TEST_SHARE,
        random_state=SEED, stratify=digits.target)
    processor = ViTImageProcessor(do_resize=True, size={"height": 8, "width": 8}, resample=2, do_rescale=True,
                                  rescale_factor=1 / 255, do_normalize=True, image_mean=[0.5], image_std=[0.5])
    pixels = np.round(x_train.reshape(-1, 1, 8, 8) * 255.0 / 16.0)
    x = torch.from_numpy(((pixels / 255.0 - 0.5) / 0.5).astype(np.float32))
    y = torch.from_numpy(y_train)
    torch.manual_seed(SEED)
    config = ViTConfig(image_size=8, patch_size=2, num_channels=1, hidden_size=48, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=96, num_labels=10,
                       id2label=dict(enumerate(NAMES)), label2id={n: i for i, n in enumerate(NAMES)})
    model = ViTForImageClassification(config)
    opt = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(SEED)
    model.train()
    for _ in range(EPOCHS):
        for idx in torch.randperm(len(y), generator=generator).split(BATCH):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(pixel_values=x[idx]).logits, y[idx])
            loss.backward()
            opt.step()
    model.eval()
    out = HERE / "model"
    model.save_pretrained(str(out))
    processor.save_pretrained(str(out))
    files = sorted(IMAGES.glob("*.png"))
    batch = processor([Image.open(f) for f in files], return_tensors="pt")
    with torch.no_grad():
        predicted = model(**batch).logits.argmax(-1).numpy()
    accuracy = float((predicted == y_test).mean())
    metrics = {"held_out_accuracy_in_process": accuracy, "held_out_images": len(files), "train": len(y),
               "seed": SEED, "epochs": EPOCHS, "parameters": sum(p.numel() for p in model.parameters()),
               "reference": "transformers ViTImageProcessor + ViTForImageClassification on the PNG files"}
    (HERE / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"held-out accuracy {accuracy:.3f} on {len(files)} PNG images; wrote {out}")


if __name__ == "__main__":
    main()
