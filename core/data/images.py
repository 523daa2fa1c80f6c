"""One image (a file path or a file object) -> pixels, the same way for every folder and hf source.

PIL's `convert("L"/"RGB")` alone clips 16-bit and float pixels to 0..255 and drops alpha, so each
PIL mode gets its own rule here (the README's "Data" section states them):
- 16-bit grey (`I;16*`) and 32-bit integer (`I`) pixels are read as 0..65535, float (`F`) as 0..1.
  A value outside that range refuses the image rather than being clipped.
- Transparent pixels (an alpha channel, or a palette or colour-key transparency) are composited on
  white, the page a transparent image is usually drawn for.
- EXIF orientation is applied (as `datasets` does), so the pixels are the picture a viewer shows.
- An animated file gives its first frame.
- An image over PIL's decompression-bomb limit is refused, with the fix (resize it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps

# What PIL raises on a broken file: UnidentifiedImageError is an OSError, truncated data raises
# OSError or ValueError, and some plugins (PNG's "broken PNG file") raise SyntaxError or EOFError.
# UnusableImage is a ValueError.
BAD_IMAGE = (OSError, ValueError, SyntaxError, EOFError)
BACKGROUND = (255, 255, 255, 255)  # opaque white, under every transparent pixel
WIDE_MODES = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535, "F": 1.0}
GREY_MODES = {"1", "L", "LA", "La", *WIDE_MODES}
ALPHA_MODES = {"LA", "La", "PA", "RGBA", "RGBa"}

ImageSource = str | Path | BinaryIO


class UnusableImage(ValueError):
    """An image PIL can open but vqgen cannot turn into faithful pixels; the message says why."""


@dataclass(frozen=True)
class ImageKind:
    """What an image's header says about how it is converted."""

    colour: bool  # else grey: one channel, or a palette of greys
    alpha: bool  # has transparency to composite on the background
    wide: bool  # 16-bit, 32-bit integer or float pixels, scaled rather than read as 8-bit


def image_kind(source: ImageSource, decode: bool = False) -> ImageKind:
    """The kind of the image at `source`, from its header. decode=True also decodes it all, to find
    a broken file; 32-bit integer and float images are always decoded, to check their range up
    front. Raises one of BAD_IMAGE."""
    with _opened(source) as im:
        if im.mode in ("I", "F"):  # the wide modes whose values can fall outside their range
            _wide_pixels(im)
        elif decode:
            im.load()
        return ImageKind(colour=_is_colour(im), alpha=_has_alpha(im), wide=im.mode in WIDE_MODES)


def read_pixels(source: ImageSource, channels: int) -> torch.Tensor:
    """(channels, h, w): uint8 for 8-bit images, float32 in [0, 1] for wide ones (grey replicated
    to 3 channels, colour to grey by ITU-R 601 luma). Raises one of BAD_IMAGE."""
    with _opened(source) as im:
        ImageOps.exif_transpose(im, in_place=True)
        if im.mode in WIDE_MODES:
            array = np.repeat(_wide_pixels(im)[..., None], channels, axis=-1)
        else:
            array = _eight_bit_pixels(im, channels)
    # A copy: PIL's arrays are read-only, and torch wants to own its memory.
    return torch.from_numpy(np.array(array)).reshape(array.shape[0], array.shape[1], -1).permute(2, 0, 1)


def source_channels(kinds: Iterable[ImageKind], others: Iterable[ImageSource], decode: bool) -> int:
    """3 when any image of a source is colour (a split's `kinds`, else its `others`, the images of
    the other splits), else 1: the same answer for every split, whatever the file order. Images
    that do not open (or, with decode, do not decode) do not count, as skip_bad drops them."""
    if any(kind.colour for kind in kinds):
        return 3
    for image in others:
        try:
            if image_kind(image, decode).colour:
                return 3
        except BAD_IMAGE:
            continue
    return 1


def conversion_notes(kinds: list[ImageKind], channels: int) -> str:
    """How images of these kinds become `channels`-channel pixels, where that is more than a copy
    ("" when it is not): the counts a split's load logs."""
    counts = {
        "had transparency, composited on white": sum(kind.alpha for kind in kinds),
        "were 16-bit or float, scaled (65535 or 1.0 -> 1)": sum(kind.wide for kind in kinds),
        "were grey, replicated to 3 channels": sum(not kind.colour for kind in kinds) if channels == 3 else 0,
        "were colour, converted to grey (ITU-R 601 luma)": sum(kind.colour for kind in kinds) if channels == 1 else 0,
    }
    return "; ".join(f"{n} {what}" for what, n in counts.items() if n)


@contextlib.contextmanager
def _opened(source: ImageSource) -> Iterator[Image.Image]:
    try:
        with Image.open(source) as im:
            yield im
    except Image.DecompressionBombError as err:
        # Not an OSError: without this it escapes skip_bad as a traceback. MAX_IMAGE_PIXELS is
        # PIL's global guard, left as it is.
        raise UnusableImage(f"too large to decode safely: {err} Resize it below that limit") from None


def _wide_pixels(im: Image.Image) -> np.ndarray:
    """float32 (h, w) in [0, 1] from a 16-bit, 32-bit integer or float image."""
    top = WIDE_MODES[im.mode]
    raw = np.asarray(im)
    pixels = raw.astype(np.float32)
    if not np.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > top:
        raise UnusableImage(
            f"{im.mode} pixels span {pixels.min():g}..{pixels.max():g}, outside 0..{top:g}; "
            f"scale them into 0..{top:g}, or save the image as 8 or 16 bits"
        )
    key = im.info.get("transparency")  # a 16-bit PNG's tRNS grey level
    if isinstance(key, int):
        pixels[raw == key] = top  # the white background
    return pixels / top


def _eight_bit_pixels(im: Image.Image, channels: int) -> np.ndarray:
    """uint8 (h, w) or (h, w, 3): alpha composited on the background first."""
    if _has_alpha(im):
        im = Image.alpha_composite(Image.new("RGBA", im.size, BACKGROUND), im.convert("RGBA"))
    if channels == 1 and not _is_colour(im):
        return np.asarray(im.convert("L"))
    # Through RGB: PIL converts every colour mode (CMYK, YCbCr, LAB, P) to RGB, not all to L.
    rgb = im.convert("RGB")
    return np.asarray(rgb if channels == 3 else rgb.convert("L"))


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in ALPHA_MODES or "transparency" in im.info


def _is_colour(im: Image.Image) -> bool:
    if im.mode in ("P", "PA"):
        palette = np.asarray(im.getpalette("RGB") or [0, 0, 0]).reshape(-1, 3)
        return bool((palette != palette[:, :1]).any())
    return im.mode not in GREY_MODES
