"""Loads saved priors with plain transformers, without vqgen: the check that a GPT prior folder is stock.

    python load_plain.py ROOT NAME...   # ROOT/ids.safetensors holds `ids`; each ROOT/NAME is a model folder

For each NAME writes ROOT/NAME.safetensors with the teacher-forced `logits` of `ids` and 12 tokens
`sampled` by `generate` after the first column of `ids` (seed 0). Run by test_gpt and test_train.
"""

import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

root = sys.argv[1]
ids = load_file(f"{root}/ids.safetensors")["ids"]
for family in sys.argv[2:]:
    model = AutoModelForCausalLM.from_pretrained(f"{root}/{family}").eval()
    torch.manual_seed(0)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        sampled = model.generate(ids[:, :1], max_new_tokens=12, do_sample=True)
    save_file({"logits": logits, "sampled": sampled}, f"{root}/{family}.safetensors")
assert not any(name.split(".")[0] in ("vqgen", "stage2_prior") for name in sys.modules), "imported vqgen"
