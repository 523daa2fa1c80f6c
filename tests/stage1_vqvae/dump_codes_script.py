"""Run under `accelerate launch`: dump_codes(TOKENIZER, tiny Fashion-MNIST, OUT)."""

import sys

from core.data import DataConfig
from core.distributed import process_state
from stage1_vqvae.codes import dump_codes

if __name__ == "__main__":
    tokenizer, out = sys.argv[1], sys.argv[2]
    dump_codes(tokenizer, DataConfig(image_size=16, max_images=37), out, batch_size=8)
    print(f"processes={process_state().num_processes}", flush=True)  # the test checks none ran alone
