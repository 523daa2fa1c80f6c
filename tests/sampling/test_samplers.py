"""Every prior of stage 2's registry has a sampler, and an unknown arch is one line listing them."""

import pytest

from core.errors import VqgenError
from sampling.samplers import SAMPLERS, sampler_for
from stage2_prior.registry import ARCHS


def test_every_registered_prior_has_a_sampler_and_no_other_arch_does():
    assert set(SAMPLERS) == set(ARCHS)


def test_an_unknown_arch_is_one_line_listing_the_registry():
    with pytest.raises(VqgenError, match="unknown architecture 'vqdiffusion'; choose one of gpt, pixelcnn, maskgit"):
        sampler_for("vqdiffusion")
