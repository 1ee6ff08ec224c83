"""Image bytes in, pixels out, and back: with the size limits checked before any pixel is decoded.

`probe(data)` reads only the header (Pillow opens lazily), so a 20-byte PNG that claims to be
100,000 × 100,000 pixels is refused by `check_size` before it can allocate 30 GB. `decode`
returns BGR uint8 pixels with the EXIF orientation applied; alpha is dropped (the models take
three channels) and 16-bit or palette images are converted. `encode` writes png, jpg or webp.

Only the documented input formats are decoded: PNG, JPEG and WebP (`INPUT_FORMATS`). Pillow can
open dozens more (SGI, TGA, PPM, PSD, ...), each a parser an attacker may aim at; an image in any
of them fails INVALID_INPUT naming its format, before a pixel of it is decoded.

Errors: `InvalidInput` for anything that is not a decodable image in those formats (naming what
was wrong, never echoing the bytes) and for images over the limits (naming the limit).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from imagemesh.errors import InvalidInput

FORMATS = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp"}
# Pillow's names of the formats we decode (the only ones its plugins are asked to read).
INPUT_FORMATS = ("PNG", "JPEG", "WEBP")

# The size limits are ours (checked in check_size); Pillow's own bomb guard would warn or raise
# at a different limit with a less clear message.
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class Probe:
    width: int
    height: int
    format: str

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6


def probe(data: bytes) -> Probe:
    if not data:
        raise InvalidInput("the image is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data), formats=INPUT_FORMATS) as im:
            return Probe(im.width, im.height, (im.format or "unknown").lower())
    except UnidentifiedImageError:
        raise InvalidInput(f"the input ({len(data)} bytes) {_other_format(data)}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidInput(f"the image header is corrupt: {exc}") from None


def check_size(p: Probe, *, max_megapixels: float, max_side: int) -> None:
    if p.width < 1 or p.height < 1:
        raise InvalidInput(f"the image has no pixels ({p.width}x{p.height})")
    if max(p.width, p.height) > max_side:
        raise InvalidInput(f"the image is {p.width}x{p.height}: its longest side is over the limit of "
                           f"{max_side} pixels")
    if p.megapixels > max_megapixels:
        raise InvalidInput(f"the image is {p.width}x{p.height} ({p.megapixels:.1f} MP), over the limit of "
                           f"{max_megapixels:g} megapixels")


def decode(data: bytes) -> np.ndarray:
    """BGR uint8 pixels (H, W, 3). Call after probe + check_size."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data), formats=INPUT_FORMATS) as im:
                im = ImageOps.exif_transpose(im)
                rgb = np.asarray(im.convert("RGB"))
    except UnidentifiedImageError:
        raise InvalidInput(f"the input {_other_format(data)}") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InvalidInput(f"the image data is corrupt or truncated: {exc}") from None
    return np.ascontiguousarray(rgb[:, :, ::-1])


# Signatures of formats people send by mistake, to name them in the error (read from the first
# bytes ourselves: no parser of a format we refuse ever sees the data).
_SIGNATURES = ((b"\x01\xda", "SGI"), (b"BM", "BMP"), (b"GIF8", "GIF"), (b"II*\x00", "TIFF"),
               (b"MM\x00*", "TIFF"), (b"8BPS", "PSD"), (b"\x00\x00\x01\x00", "ICO"),
               (b"%!PS", "EPS"), (b"\xc5\xd0\xd3\xc6", "EPS"), (b"qoif", "QOI"),
               (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (b"\xff\x4f\xff\x51", "JPEG 2000"),
               (b"SIMPLE  =", "FITS"), (b"#?RADIANCE", "HDR"), (b"DDS ", "DDS"))


def _other_format(data: bytes) -> str:
    """Why the bytes are refused, for the error message: 'is an SGI image: only png, jpeg and
    webp are read', or 'is not a png, jpeg or webp image'."""
    name = next((n for magic, n in _SIGNATURES if data.startswith(magic)), None)
    if name is None and data[:1] == b"P" and data[1:2] in b"1234567" and data[1:2]:
        name = "PPM/PGM/PBM"
    if name is None and data[4:8] == b"ftyp":
        name = "HEIF/AVIF"
    if name is None:
        return "is not a png, jpeg or webp image"
    return f"is a{'n' if name[:1] in 'AEFHILMNORSX' else ''} {name} image: only png, jpeg and webp are read"



def content_type(fmt: str) -> str:
    try:
        return FORMATS[fmt]
    except KeyError:
        raise InvalidInput(f"output_format {fmt!r}: must be png, jpg or webp") from None


def encode(image: np.ndarray, fmt: str, *, jpeg_quality: int = 92, webp_quality: int = 90) -> bytes:
    content_type(fmt)
    ext = ".jpg" if fmt in ("jpg", "jpeg") else "." + fmt
    params: list[int] = []
    if ext == ".jpg":
        params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]
    elif ext == ".webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, webp_quality]
    elif ext == ".png":
        params = [cv2.IMWRITE_PNG_COMPRESSION, 3]  # fast; level 9 costs seconds on large outputs
    ok, buf = cv2.imencode(ext, image, params)
    if not ok:
        raise RuntimeError(f"cv2 could not encode a {image.shape} image as {fmt}")
    return buf.tobytes()
