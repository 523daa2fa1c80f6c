"""Stage 2: priors over code grids: autoregressive (a transformers GPT/Llama, a gated PixelCNN) or
masked (MaskGIT, a transformers BERT). `stage2_prior.registry` lists them; `stage2_prior.load.load_prior`
loads a saved one. Nothing else is imported here: `sampling` imports `stage2_prior.vocab`, and the
registry imports the samplers."""

from transformers import AutoConfig, AutoModel

from stage2_prior.pixelcnn import PixelCNNConfig, PixelCNNPrior

# The one import-time side effect allowed (STYLE 9): our PixelCNN joins the Auto classes.
AutoConfig.register(PixelCNNConfig.model_type, PixelCNNConfig, exist_ok=True)
AutoModel.register(PixelCNNConfig, PixelCNNPrior, exist_ok=True)

__all__ = ["PixelCNNConfig", "PixelCNNPrior"]
