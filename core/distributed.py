"""The process group as Accelerate sees it, for code that runs outside the training loop."""

from accelerate import PartialState
from accelerate.utils import parse_flag_from_env


def process_state() -> PartialState:
    """Accelerate's shared process state, honouring ACCELERATE_USE_CPU.

    A bare `PartialState()` ignores that variable (only AcceleratorState reads it), so under
    `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu` every CPU process would believe it is alone,
    and, being shared state, would keep a later Accelerator single-process too.
    """
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
