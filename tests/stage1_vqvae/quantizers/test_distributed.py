"""What must agree across processes (stage1_vqvae/quantizers/distributed.py), under 2 real processes."""

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[3]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_codebooks_meters_and_lfq_entropy_agree_across_two_processes(cpu_launch):
    script = ROOT / "tests" / "stage1_vqvae" / "ddp_quantizer_script.py"
    done = subprocess.run([*cpu_launch(2), str(script)], cwd=ROOT, timeout=300, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
