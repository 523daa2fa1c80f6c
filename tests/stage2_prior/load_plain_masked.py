"""Loads a saved MaskGIT prior with plain transformers, without vqgen: the check that its folder is stock.

    python load_plain_masked.py ROOT   # ROOT/ids.safetensors holds `ids`; ROOT/model is the model folder

Writes ROOT/model.safetensors with the `logits` of `ids`. Run by test_maskgit.
"""

import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForMaskedLM

root = sys.argv[1]
ids = load_file(f"{root}/ids.safetensors")["ids"]
model = AutoModelForMaskedLM.from_pretrained(f"{root}/model").eval()
with torch.no_grad():
    save_file({"logits": model(input_ids=ids).logits}, f"{root}/model.safetensors")
assert not any(name.split(".")[0] in ("vqgen", "stage2_prior") for name in sys.modules), "imported vqgen"
