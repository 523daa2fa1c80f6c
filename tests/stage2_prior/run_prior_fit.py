"""Trains a tiny prior (arch argv[3]) on argv[1] codes into argv[2]; run by test_train under 1 and 2 processes."""

import sys

from core.distributed import process_state
from core.loop import TrainConfig
from stage2_prior.train import PriorRunConfig, train_prior

if __name__ == "__main__":
    model = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    train = TrainConfig(steps=6, batch_size=32, lr=1e-2, warmup_steps=2, weight_decay=0.1, eval_every=6,
                        save_every=6, log_every=1)
    cfg = PriorRunConfig(codes=sys.argv[1], arch=sys.argv[3], preset="tiny", model=model, label_dropout=0.5, train=train)
    train_prior(cfg, sys.argv[2])
    print(f"processes={process_state().num_processes}", flush=True)  # the test checks none ran alone
