"""Image data sets from a one-word spec, shared by every stage.

    fashion-mnist[:DIR]   Debian's idx files ($FMNIST_DIR, else /usr/share/datasets/fashion-mnist);
                          torchvision's download only when they are missing and we are online
    mnist[:ROOT]          torchvision MNIST under ROOT (default $VQGEN_DATA or ~/.cache/vqgen)
    cifar10[:ROOT]        torchvision CIFAR-10 under ROOT
    folder:PATH           any image tree, recursive; first-level sub-folders are classes when every
                          image sits in one; PATH/train and PATH/val (or test) are used as splits,
                          with one class list built from all of them
    hf:NAME_OR_PATH       a `datasets` data set (saved folder or hub name) with an `image` column and
                          an optional `label` column

Every item is `{"image": (C, H, W) float in [-1, 1], "label": int64 (-1 when none), "index": int64}`.
Where a source has no validation split, a deterministic one is cut from its training split.
Folder and hf images are decoded by `core.data.images` (16-bit scaling, alpha on white, EXIF
orientation). Loading a split reads every image's header once (`survey`): a bad image stops there,
before any work, or with `skip_bad` is dropped (each image is then decoded in full to find them)
and counted in `ImageDataset.skipped`. The channel count is the whole source's: 3 when any image of
any split is colour, else 1, unless `channels` is set; the conversions are logged once per split.

One file each:
    config.py            DataConfig, the `data:` settings
    dataset.py           load_images(cfg, split) -> ImageDataset: the spec's reader, then transforms
    source.py            Source, what every reader returns (raw pixels and labels, one image a time)
    torchvision_sets.py  fashion-mnist (Debian idx files), mnist, cifar10
    folder.py            folder:PATH image trees
    hf.py                hf:NAME `datasets` data sets
    survey.py            the look at every image of a split before any work (bad images, channels)
    images.py            one image file or stream -> faithful pixels (16-bit, alpha, EXIF, palettes)
    splits.py            SPLITS and the seeded val cut
    transforms.py        pixels -> (C, H, W) in [-1, 1]: channels, pad or crop and resize
"""

from core.data.config import DataConfig
from core.data.dataset import ImageDataset, load_images
from core.data.folder import IMAGE_SUFFIXES
from core.data.images import BAD_IMAGE
from core.data.splits import SPLITS, deterministic_split
from core.data.transforms import to_model_range

__all__ = ["BAD_IMAGE", "IMAGE_SUFFIXES", "SPLITS", "DataConfig", "ImageDataset", "deterministic_split",
           "load_images", "to_model_range"]
