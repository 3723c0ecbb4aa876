"""Encoded image -> the classifier's input values: what the image pipeline's pre-processing model runs.

Copied beside model.py by render; plain Pillow + NumPy, so the same code is the in-process reference the
tests and benchmarks compare the server with. Order (torchvision's classic transforms): decode, convert to
the mode, resize to `size` ([h, w], or an int: the shortest edge; bilinear unless the spec says), centre crop to `crop`, scale to 0..1, (x - mean) / std, channels first.
"""

import io

import numpy as np
from PIL import Image


class ImageError(ValueError):
    """A request's bytes are not an image this pipeline takes (the message says what and why)."""


def decode(data: bytes, max_bytes: int, max_pixels: int) -> "Image.Image":
    if len(data) > max_bytes:
        raise ImageError(f"image of {len(data):,} bytes is larger than the {max_bytes:,} this model accepts")
    try:
        image = Image.open(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - Pillow raises several types for "not an image"
        raise ImageError(f"not a decodable image ({type(exc).__name__}: {exc}); send the bytes of a JPEG or PNG "
                         "file") from None
    width, height = image.size   # from the header: checked before the pixels are decoded
    if width * height > max_pixels:
        raise ImageError(f"image of {width}x{height} = {width * height:,} pixels is larger than the "
                         f"{max_pixels:,} this model accepts")
    try:
        image.load()
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt data
        raise ImageError(f"the image data is damaged ({type(exc).__name__}: {exc})") from None
    return image


# The spec's resampling filter names -> Pillow's filters (Hugging Face image processors store Pillow's numbers).
RESAMPLE = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}


def resized(width: int, height: int, size) -> tuple[int, int]:
    """(height, width) after resizing: `size` [h, w] exactly, or an int for the shortest edge with the aspect ratio
    kept (the long edge int(size x long / short), as torchvision's Resize(int) and Hugging Face's processors)."""
    if not isinstance(size, int):
        return size[0], size[1]
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def to_values(image: "Image.Image", size, crop, mode: str, mean, std, resample: str = "bilinear") -> np.ndarray:
    """FP32 array [channels, crop_h, crop_w] of one decoded image."""
    height, width = resized(image.width, image.height, size)
    crop_h, crop_w = crop
    image = image.convert(mode).resize((width, height), RESAMPLE[resample])
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    x = np.asarray(image, dtype=np.float32)[top:top + crop_h, left:left + crop_w] / 255.0
    x = x.reshape(crop_h, crop_w, -1)
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
