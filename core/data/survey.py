"""The look at every image of a split before any work: a bad image is named (or, with
data.skip_bad, dropped and counted), the split's channel count is settled, and the conversions
are logged once."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from core.data.config import DataConfig
from core.data.images import (
    BAD_IMAGE,
    ImageKind,
    ImageSource,
    UnusableImage,
    conversion_notes,
    image_kind,
    source_channels,
)
from core.errors import VqgenError

logger = logging.getLogger(__name__)


def survey(
    images: Iterable[ImageSource], others: Iterable[ImageSource], cfg: DataConfig, split: str, name_of: Callable[[int], str]
) -> tuple[list[int], int, int]:
    """Inspect every image of `split` before any work: (the indices kept, how many skip_bad dropped,
    the channel count). A bad image stops here unless skip_bad; with it, each image is decoded in
    full to find them. `others` are the source's images outside this split, for the channel rule."""
    kinds: dict[int, ImageKind] = {}
    bad: list[tuple[int, Exception]] = []
    for i, image in enumerate(images):
        try:
            kinds[i] = image_kind(image, decode=cfg.skip_bad)
        except BAD_IMAGE as err:
            bad.append((i, err))
    if bad and not cfg.skip_bad:
        raise unreadable(name_of(bad[0][0]), bad[0][1], len(bad) - 1)
    if bad:
        logger.warning("%s (%s): skipped %d unreadable images (data.skip_bad=true)", cfg.spec, split, len(bad))
    channels = cfg.channels or source_channels(kinds.values(), others, cfg.skip_bad)
    if notes := conversion_notes(list(kinds.values()), channels):
        logger.info("%s (%s): of %d images, %s", cfg.spec, split, len(kinds), notes)
    return list(kinds), len(bad), channels


def unreadable(name: str, err: Exception, others: int = 0) -> VqgenError:
    """The one line for a bad image, `name` being its path or its hf split and row."""
    reason = str(err) if isinstance(err, UnusableImage) else f"{type(err).__name__}: {err}"
    more = f" (and {others} more bad images in this split)" if others else ""
    return VqgenError(f"{name}: cannot read this image ({reason}){more}; fix or remove it, or pass --data.skip_bad=true")
