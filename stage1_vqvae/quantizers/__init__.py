"""The tokenizer's quantizers, one per file, behind one interface (`base.Quantizer`):

    vq.py        VectorQuantizer       learned or EMA codebook of K vectors (VQ-VAE)
    fsq.py       FiniteScalarQuantizer each dimension rounded to a few levels, K = prod(levels) (FSQ)
    lfq.py       LookupFreeQuantizer   each dimension to its sign, K = 2**bits, entropy penalty (MAGVIT-v2)
    registry.py  model.quantizer.kind -> settings class and module; build_quantizer
    meters.py    usage and perplexity, shared by every kind
    kmeans.py    nearest-code search and k-means (VQ)
    distributed.py  the collectives (all no-ops in one process)
"""

from stage1_vqvae.quantizers.base import MAX_CODEBOOK_SIZE, Quantizer, QuantizerConfig, QuantizerOutput
from stage1_vqvae.quantizers.fsq import FiniteScalarQuantizer, FSQConfig
from stage1_vqvae.quantizers.lfq import LFQConfig, LookupFreeQuantizer
from stage1_vqvae.quantizers.meters import code_perplexity
from stage1_vqvae.quantizers.registry import (
    DEFAULT_KIND,
    KINDS,
    build_quantizer,
    quantizer_settings,
    settings_dict,
)
from stage1_vqvae.quantizers.vq import VectorQuantizer, VQConfig

__all__ = [
    "DEFAULT_KIND", "KINDS", "MAX_CODEBOOK_SIZE", "FSQConfig", "FiniteScalarQuantizer", "LFQConfig", "LookupFreeQuantizer",
    "Quantizer", "QuantizerConfig", "QuantizerOutput", "VQConfig", "VectorQuantizer", "build_quantizer",
    "code_perplexity", "quantizer_settings", "settings_dict",
]
