"""Each prior architecture's sampler: the one place an arch name maps to sampling code.

The rest of a prior (build, load, objective) is its entry in `stage2_prior.registry.PRIORS`; its
sampler lives here, in the layer above, so that stage 2 never imports sampling. A test checks that
every arch of the registry has a sampler.
"""

from __future__ import annotations

from sampling.generate import GPT_SAMPLER, PIXELCNN_SAMPLER, Sampler
from sampling.maskgit import MASKGIT_SAMPLER
from stage2_prior.registry import prior_kind

SAMPLERS: dict[str, Sampler] = {"gpt": GPT_SAMPLER, "pixelcnn": PIXELCNN_SAMPLER, "maskgit": MASKGIT_SAMPLER}


def sampler_for(arch: str, source: str = "prior.arch") -> Sampler:
    """The sampler of `arch`; an arch outside the registry is one line listing it."""
    prior_kind(arch, source)
    return SAMPLERS[arch]
