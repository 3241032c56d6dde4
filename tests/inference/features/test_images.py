"""Specification of the image decoding + preprocessing shared by training and the workers."""

from __future__ import annotations

import io
import json
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from inference.features import images as image_preprocessing
from inference.features.images import (
    RESAMPLE,
    ImageDecodeError,
    ImagePreprocessing,
    decode_image,
    preprocess,
)
from tests.helpers import DATA_DIR, missing_data

PARAMS = ImagePreprocessing()
LOWEST = (0 - 127) / 128  # value of a 0 pixel
HIGHEST = (255 - 127) / 128  # value of a 255 pixel


def sample_jpegs(n: int) -> list[bytes]:
    paths = sorted((DATA_DIR / "images").glob("*.jpg"))[:n]
    if not paths:
        missing_data(f"Rakuten sample images not found under {DATA_DIR / 'images'} (set RAKUTEN_DATA_DIR)")
    return [p.read_bytes() for p in paths]


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height pixels (a decompression-bomb shape)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixel_data = zlib.compress(b"\0" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixel_data) + chunk(b"IEND", b"")


# --- parameters --------------------------------------------------------------------------


def test_defaults_are_the_efficientnet_lite_conventions():
    assert PARAMS.to_dict() == {"size": 224, "resize_ratio": 1.14, "offset": 127.0, "scale": 128.0}
    assert PARAMS.resize_to == 255  # round(224 * 1.14) = round(255.36): short side before the centre crop


def test_parameters_round_trip_through_the_json_manifest():
    custom = ImagePreprocessing(size=160, resize_ratio=1.25, offset=127.5, scale=127.5)
    for params in (PARAMS, custom):
        assert ImagePreprocessing.from_dict(json.loads(json.dumps(params.to_dict()))) == params


def test_unknown_manifest_fields_are_refused_rather_than_ignored():
    with pytest.raises(ValueError, match="interpolation"):
        ImagePreprocessing.from_dict({**PARAMS.to_dict(), "interpolation": "nearest"})


@pytest.mark.parametrize("bad", [{"size": 0}, {"size": 224.5}, {"resize_ratio": 0.9}, {"scale": 0.0}])
def test_invalid_parameters_are_refused(bad):
    with pytest.raises(ValueError):
        ImagePreprocessing(**bad)


# --- preprocess ----------------------------------------------------------------------------


def test_real_photos_become_float32_nchw_in_the_normalised_range():
    images = [decode_image(data) for data in sample_jpegs(4)]
    batch = preprocess(images, PARAMS)
    assert batch.shape == (4, 3, 224, 224)
    assert batch.dtype == np.float32
    assert batch.flags.c_contiguous
    assert LOWEST <= batch.min() and batch.max() <= HIGHEST
    assert batch.std() > 0.1  # real content, not a constant image


def test_empty_batch_has_the_right_shape():
    assert preprocess([], PARAMS).shape == (0, 3, 224, 224)


def test_pixels_are_normalised_as_pixel_minus_127_over_128_in_rgb_order():
    red = Image.new("RGB", (300, 400), (255, 0, 127))
    batch = preprocess([red], PARAMS)
    np.testing.assert_array_equal(batch[0, 0], np.float32(HIGHEST))
    np.testing.assert_array_equal(batch[0, 1], np.float32(LOWEST))
    np.testing.assert_array_equal(batch[0, 2], np.float32(0.0))


def test_is_resize_short_side_then_centre_crop_with_bicubic():
    """Same as resizing the whole image (short side -> 255, bicubic) then cropping the centre 224.

    The implementation resamples only the crop region; Pillow's coefficient rounding
    may then differ by at most 2 grey levels out of 255.
    """
    rng = np.random.default_rng(0)
    photos = [decode_image(data) for data in sample_jpegs(2)]
    noise = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in [(640, 480), (333, 777)]]
    for image in photos + noise:
        w, h = image.size
        scale = 255 / min(w, h)
        rw, rh = round(w * scale), round(h * scale)
        left, top = (rw - 224) // 2, (rh - 224) // 2
        reference = image.resize((rw, rh), RESAMPLE).crop((left, top, left + 224, top + 224))
        expected = (np.asarray(reference, dtype=np.float32).transpose(2, 0, 1) - 127) / 128
        np.testing.assert_allclose(preprocess([image], PARAMS)[0], expected, rtol=0, atol=2 / 128 + 1e-6)


def test_only_the_centre_of_a_wide_image_is_kept():
    image = Image.new("RGB", (1000, 500), (255, 0, 0))  # red margins...
    image.paste((0, 255, 0), (250, 0, 750, 500))  # ...around a green centre wider than the crop
    batch = preprocess([image], PARAMS)
    np.testing.assert_array_equal(batch[0, 0], np.float32(LOWEST))
    np.testing.assert_array_equal(batch[0, 1], np.float32(HIGHEST))


def test_extreme_aspect_ratios_are_cheap():
    """A 4 Mpx 1-pixel-high strip must not be upscaled to 255 x 10**9 pixels first."""
    strip = Image.new("RGB", (4_000_000, 1), (10, 20, 30))
    started = time.perf_counter()
    batch = preprocess([strip], PARAMS)
    assert batch.shape == (1, 3, 224, 224)
    assert time.perf_counter() - started < 5


def test_preprocess_gives_the_same_result_for_a_non_rgb_image_as_for_its_decoded_copy():
    gray = Image.fromarray((np.arange(200 * 300) % 256).astype(np.uint8).reshape(200, 300))
    np.testing.assert_array_equal(preprocess([gray], PARAMS), preprocess([decode_image(encode(gray, "PNG"))], PARAMS))


# --- decode_image: accepted inputs ------------------------------------------------------------


def test_real_jpegs_decode_to_rgb():
    for data in sample_jpegs(3):
        image = decode_image(data)
        assert image.mode == "RGB"
        assert image.size == (500, 500)


def test_grayscale_png_is_converted_to_rgb_with_equal_channels():
    gray = Image.linear_gradient("L").resize((64, 48))
    image = decode_image(encode(gray, "PNG"))
    assert image.mode == "RGB" and image.size == (64, 48)
    pixels = np.asarray(image)
    np.testing.assert_array_equal(pixels[..., 0], np.asarray(gray))
    np.testing.assert_array_equal(pixels[..., 1], pixels[..., 0])
    np.testing.assert_array_equal(pixels[..., 2], pixels[..., 0])


def test_16_bit_grayscale_png_is_scaled_to_8_bits_not_clipped():
    wide = np.array([[0, 257 * 64, 257 * 128, 65535]], dtype=np.uint16)
    image = decode_image(encode(Image.fromarray(wide), "PNG"))
    np.testing.assert_array_equal(np.asarray(image)[0, :, 0], [0, 64, 128, 255])


def test_rgba_png_is_flattened_onto_a_white_background():
    rgba = Image.new("RGBA", (40, 20), (0, 0, 0, 0))  # fully transparent black...
    rgba.paste((200, 10, 10, 255), (0, 0, 20, 20))  # ...except an opaque red left half
    image = decode_image(encode(rgba, "PNG"))
    assert image.mode == "RGB"
    assert image.getpixel((5, 5)) == (200, 10, 10)
    assert image.getpixel((30, 5)) == (255, 255, 255)


def test_palette_png_with_a_transparent_colour_is_flattened_onto_white():
    palette = Image.new("P", (10, 10), 0)
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    palette.paste(1, (0, 0, 5, 10))
    image = decode_image(encode(palette, "PNG", transparency=0))
    assert image.getpixel((0, 0)) == (0, 0, 255)
    assert image.getpixel((9, 0)) == (255, 255, 255)


def test_cmyk_jpeg_is_converted_to_rgb():
    cmyk = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # red in CMYK
    image = decode_image(encode(cmyk, "JPEG", quality=95))
    assert image.mode == "RGB"
    r, g, b = image.getpixel((16, 16))
    assert r > 200 and g < 60 and b < 60


def test_multi_picture_jpeg_from_phones_is_accepted():
    first, second = Image.new("RGB", (16, 16), (250, 0, 0)), Image.new("RGB", (16, 16), (0, 0, 250))
    buffer = io.BytesIO()
    first.save(buffer, "MPO", save_all=True, append_images=[second], quality=95)
    assert Image.open(buffer).format == "MPO"
    image = decode_image(buffer.getvalue())
    r, g, b = image.getpixel((8, 8))  # the first picture is used
    assert r > 200 and g < 40 and b < 40


def test_webp_is_accepted():
    image = decode_image(encode(Image.new("RGB", (16, 16), (0, 128, 255)), "WEBP", lossless=True))
    assert image.getpixel((8, 8)) == (0, 128, 255)


# --- decode_image: refused inputs ---------------------------------------------------------


def test_empty_bytes_are_refused_as_empty():
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_image(b"")


def test_random_bytes_are_refused_as_not_an_image():
    noise = np.random.default_rng(0).bytes(10_000)
    with pytest.raises(ImageDecodeError, match="not a recognised image"):
        decode_image(noise)


def test_truncated_jpeg_is_refused_as_truncated():
    data = encode(Image.effect_noise((256, 256), 64).convert("RGB"), "JPEG", quality=90)
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_image(data[: len(data) // 2])


def test_truncated_real_photo_is_refused_as_truncated():
    data = sample_jpegs(1)[0]
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_image(data[: len(data) - 100])


def test_oversize_payload_is_refused_before_any_decoding(monkeypatch):
    def must_not_be_called(*args, **kwargs):
        raise AssertionError("the payload was parsed although it is over the byte limit")

    monkeypatch.setattr(image_preprocessing.Image, "open", must_not_be_called)
    data = encode(Image.new("RGB", (64, 64)), "PNG")
    with pytest.raises(ImageDecodeError, match="too large"):
        decode_image(data, max_bytes=len(data) - 1)


def test_decompression_bomb_is_refused_from_its_header():
    with pytest.raises(ImageDecodeError, match="too many pixels"):
        decode_image(png_header_only(8_000, 8_000))  # 64 Mpx > 40 Mpx default limit
    with pytest.raises(ImageDecodeError, match="too many pixels"):
        decode_image(png_header_only(100_000, 100_000))  # beyond Pillow's own bomb limit too


def test_pixel_limit_is_configurable():
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    assert decode_image(data, max_pixels=10_000).size == (100, 100)
    with pytest.raises(ImageDecodeError, match="too many pixels"):
        decode_image(data, max_pixels=9_999)


def test_formats_outside_the_allow_list_are_refused():
    ppm = b"P6\n2 2\n255\n" + bytes(12)  # valid PPM, which Pillow could read
    with pytest.raises(ImageDecodeError, match="not a recognised image"):
        decode_image(ppm)


def test_non_bytes_input_is_refused():
    with pytest.raises(ImageDecodeError, match="expected image bytes"):
        decode_image("/path/to/image.jpg")  # type: ignore[arg-type]


def test_decode_errors_are_value_errors():
    assert issubclass(ImageDecodeError, ValueError)
