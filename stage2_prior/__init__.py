"""Stage 2: autoregressive priors over code grids (a transformers GPT/Llama or a gated PixelCNN)."""

from transformers import AutoConfig, AutoModel

from stage2_prior.pixelcnn import PixelCNNConfig, PixelCNNPrior

# The one import-time side effect allowed (STYLE 9): our PixelCNN joins the Auto classes.
AutoConfig.register(PixelCNNConfig.model_type, PixelCNNConfig, exist_ok=True)
AutoModel.register(PixelCNNConfig, PixelCNNPrior, exist_ok=True)

from stage2_prior.load import LoadedPrior, PriorMeta, load_prior  # noqa: E402

__all__ = ["LoadedPrior", "PixelCNNConfig", "PixelCNNPrior", "PriorMeta", "load_prior"]
