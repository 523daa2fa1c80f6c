"""Stage 1: the VQ-VAE tokenizer (quantize, model, losses, train, load) and the code-grid files (codes).

Importing the package registers the tokenizer with transformers' Auto classes, so
`AutoModel.from_pretrained(<tokenizer folder>)` works; that is the only import side effect.
"""

from transformers import AutoConfig, AutoModel

from stage1_vqvae.load import load_tokenizer, training_data
from stage1_vqvae.model import MODEL_TYPE, VQVAE, VQVAEConfig

AutoConfig.register(MODEL_TYPE, VQVAEConfig, exist_ok=True)
AutoModel.register(VQVAEConfig, VQVAE, exist_ok=True)

__all__ = ["VQVAE", "VQVAEConfig", "load_tokenizer", "training_data"]
