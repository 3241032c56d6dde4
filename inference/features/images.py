"""Image decoding and preprocessing shared by training and the stream workers.

Training (feature extraction for the classifier) and serving (the image
workers feeding the ONNX encoder) must turn the same bytes into the same
tensor, so both go through :func:`decode_image` followed by :func:`preprocess`.
This module deliberately depends only on numpy, Pillow and the standard library
so that the workers never need torch.

Pipeline, for an :class:`ImagePreprocessing` ``p``:

1. decode the bytes (allow-listed formats only, size and pixel limits checked
   first) and convert to 8-bit RGB; transparency is composited onto white;
2. resize so that the short side becomes ``round(p.size * p.resize_ratio)``
   (255 px for 224 and 1.14), keeping the aspect ratio, with Pillow's
   ``BICUBIC`` filter;
3. take the central ``p.size x p.size`` crop;
4. ``(pixel - p.offset) / p.scale`` on 0..255 values (the EfficientNet-Lite
   convention, *not* ImageNet mean/std), RGB order, NCHW float32.

Why BICUBIC: it is the interpolation the EfficientNet-Lite checkpoints were
evaluated with (timm's ``tf_efficientnet_lite0`` config says ``bicubic``), and
Pillow's implementation is deterministic and antialiased when downscaling.
The filter is a module constant rather than a manifest field: changing it is
a change of the model contract and must come with a retrained model.

Steps 2 and 3 are done in a single ``Image.resize(..., box=...)`` call that
only computes the cropped region. It matches "resize the whole image, then
crop" to within 2 grey levels out of 255 (float rounding in Pillow's filter
coefficients), is faster, and keeps memory bounded for extreme aspect ratios
(a 40,000,000 x 1 image would otherwise be upscaled to 255 x 10**10 pixels).
Training and serving both call this function, so they agree bit for bit.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = [
    "ACCEPTED_FORMATS",
    "RESAMPLE",
    "ImageDecodeError",
    "ImagePreprocessing",
    "decode_image",
    "preprocess",
    "to_rgb",
]

#: Resampling filter used for every resize, in training and in serving.
RESAMPLE = Image.Resampling.BICUBIC

#: Pillow format names accepted by :func:`decode_image`. Everything else is
#: refused without being parsed further (e.g. EPS, which Pillow would hand to
#: Ghostscript). Camera/phone multi-picture JPEGs (format "MPO") come in
#: through the JPEG plugin.
ACCEPTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")

#: Background used when flattening transparent images; product photos in the
#: Rakuten catalogue are shot on white.
_BACKGROUND_RGB = (255, 255, 255)


@dataclass(frozen=True)
class ImagePreprocessing:
    """Parameters of the image preprocessing; stored in the model manifest.

    ``size``: side of the square model input, in pixels.
    ``resize_ratio``: the short side is first resized to
    ``round(size * resize_ratio)`` pixels, then the centre ``size`` crop is kept.
    ``offset``/``scale``: normalisation, ``(pixel - offset) / scale`` with
    pixels in 0..255.
    """

    size: int = 224
    resize_ratio: float = 1.14
    offset: float = 127.0
    scale: float = 128.0

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size <= 0:
            raise ValueError(f"size must be a positive int, got {self.size!r}")
        for name in ("resize_ratio", "offset", "scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value!r}")
            object.__setattr__(self, name, float(value))  # 127 and 127.0 serialise the same way
        if self.resize_ratio < 1.0:
            raise ValueError(f"resize_ratio must be >= 1 (crop inside the resized image), got {self.resize_ratio!r}")
        if self.scale == 0:
            raise ValueError("scale must be non-zero")

    @property
    def resize_to(self) -> int:
        """Length of the short side after resizing (255 for the defaults)."""
        return _round_half_up(self.size * self.resize_ratio)

    def to_dict(self) -> dict:
        """JSON-friendly dict (plain ints/floats) for the model manifest."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> ImagePreprocessing:
        """Inverse of :meth:`to_dict`.

        Missing keys take the defaults. Unknown keys are an error: a manifest
        written by a newer version with an extra preprocessing step must not be
        silently served with the old one.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown image preprocessing field(s): {', '.join(unknown)}")
        kwargs = dict(d)
        if "size" in kwargs and isinstance(kwargs["size"], float) and kwargs["size"].is_integer():
            kwargs["size"] = int(kwargs["size"])
        return cls(**kwargs)


class ImageDecodeError(ValueError):
    """The payload is not an image this service accepts; the message says why.

    ``reason`` is a stable code for dead letters and metrics: ``not_an_image``,
    ``image_too_large`` (bytes), ``too_many_pixels`` (decompression bomb),
    ``truncated_image`` or ``corrupt_image``.
    """

    def __init__(self, message: str, reason: str = "corrupt_image") -> None:
        super().__init__(message)
        self.reason = reason


def decode_image(data: bytes, max_bytes: int = 5_000_000, max_pixels: int = 40_000_000) -> Image.Image:
    """Decode an encoded image (JPEG, PNG, WebP, ...) into an 8-bit RGB image.

    Checks, in order: the payload is non-empty and at most ``max_bytes`` long
    (before any parsing), it is an accepted format (:data:`ACCEPTED_FORMATS`),
    its header declares at most ``max_pixels`` pixels (before decoding the
    pixel data, so decompression bombs are cheap to refuse), and the pixel data
    decodes completely (truncated files are refused, not padded with grey).

    Grayscale, palette, CMYK, 16-bit and transparent images are converted to
    RGB (see :func:`to_rgb`). Only the first frame of animated images is used.
    EXIF orientation is ignored (the Rakuten catalogue images carry none).

    Raises :class:`ImageDecodeError` with a human-readable reason.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageDecodeError(f"expected image bytes, got {type(data).__name__}", "not_an_image")
    n_bytes = len(data)
    if n_bytes == 0:
        raise ImageDecodeError("empty payload: 0 bytes, not an image", "not_an_image")
    if n_bytes > max_bytes:
        raise ImageDecodeError(f"payload too large: {n_bytes} bytes > limit of {max_bytes} bytes", "image_too_large")

    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"too many pixels (possible decompression bomb): {exc}", "too_many_pixels") from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(
            f"not a recognised image: {n_bytes} bytes that are not one of {', '.join(ACCEPTED_FORMATS)}",
            "not_an_image",
        ) from exc
    except MemoryError:
        raise
    except Exception as exc:  # untrusted input: any parser failure is a bad payload
        raise ImageDecodeError(f"corrupt image header: {type(exc).__name__}: {exc}") from exc

    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"invalid image dimensions {width}x{height}")
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"too many pixels (possible decompression bomb): {width}x{height} = "
            f"{width * height} > limit of {max_pixels}", "too_many_pixels",
        )

    try:
        image.load()
        return to_rgb(image)
    except MemoryError:
        raise
    except OSError as exc:
        # Pillow reports missing data as "image file is truncated" or "Truncated File Read".
        reason = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        raise ImageDecodeError(f"{reason} {image.format} image: {exc}", f"{reason}_image") from exc
    except Exception as exc:  # untrusted input: any decoder failure is a bad payload
        raise ImageDecodeError(f"corrupt {image.format} image: {type(exc).__name__}: {exc}") from exc


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow image to 8-bit RGB, the same way for training and serving.

    * RGB is returned as is;
    * anything with transparency (RGBA, LA, PA, palette with a transparent
      colour) is alpha-composited onto white, so transparent pixels do not turn
      into black (or into whatever colour is hidden under alpha 0);
    * 16-bit grayscale is scaled to 8 bits (Pillow's own conversion would clip);
    * everything else (L, 1, P, CMYK, YCbCr, ...) uses Pillow's conversion.
    """
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16"):
        wide = np.asarray(image).astype(np.uint32)
        gray = ((wide * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")  # 2-D uint8 -> mode "L"
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode in ("P", "L", "RGB") and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_BACKGROUND_RGB, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def preprocess(images: Sequence[Image.Image], params: ImagePreprocessing) -> np.ndarray:
    """Turn decoded images into the encoder input: float32 ``[N, 3, size, size]``.

    Non-RGB images are first converted with :func:`to_rgb`. Output values lie in
    ``[(0 - offset) / scale, (255 - offset) / scale]`` (about [-0.99, 1.0] with
    the defaults). An empty sequence gives an array of shape ``[0, 3, size, size]``.
    """
    size = params.size
    out = np.empty((len(images), 3, size, size), dtype=np.float32)
    for i, image in enumerate(images):
        pixels = np.asarray(_resize_and_center_crop(to_rgb(image), params), dtype=np.float32)
        out[i] = ((pixels - params.offset) / params.scale).transpose(2, 0, 1)
    return out


def _resize_and_center_crop(image: Image.Image, params: ImagePreprocessing) -> Image.Image:
    """Short side -> ``params.resize_to``, then the centre ``size`` crop, in one resample."""
    width, height = image.size
    size, short = params.size, params.resize_to
    if width <= height:
        resized_w, resized_h = short, max(short, _round_half_up(height * short / width))
    else:
        resized_w, resized_h = max(short, _round_half_up(width * short / height)), short
    left = (resized_w - size) // 2
    top = (resized_h - size) // 2
    # Source-space box of the crop: the resize scale stays width / resized_w,
    # exactly as if the whole image had been resized and then cropped.
    sx, sy = width / resized_w, height / resized_h
    box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    return image.resize((size, size), RESAMPLE, box=box)


def _round_half_up(x: float) -> int:
    """Round to nearest, halves up (Python's round() is banker's rounding)."""
    return int(math.floor(x + 0.5))
