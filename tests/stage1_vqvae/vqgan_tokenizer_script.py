"""Trains the VQGAN test tokenizer (test_train_vqgan.vqgan_config) into argv[1]: run by the tests under
one process and under `accelerate launch` with two, whose numbers must agree."""

import sys

from test_train_vqgan import vqgan_config

from stage1_vqvae.train import train_tokenizer

if __name__ == "__main__":
    train_tokenizer(vqgan_config(), sys.argv[1])
