"""Trains the test tokenizer config under bf16 autocast into argv[1]. Its own process, because
Accelerate fixes one mixed precision per process."""

import dataclasses
import sys

from test_train import TRAIN, config

from stage1_vqvae.train import train_tokenizer

if __name__ == "__main__":
    train = dataclasses.replace(TRAIN, steps=3, eval_every=3, save_every=3, mixed_precision="bf16")
    train_tokenizer(config(train=train), sys.argv[1])
