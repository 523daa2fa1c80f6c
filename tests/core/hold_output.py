"""`python hold_output.py OUT KIND`: claim OUT as another vqgen writer would, say "held", and keep the
lock until stdin closes (or the test kills this process)."""

import sys

from core.runs import claim_output

if __name__ == "__main__":
    claim_output(sys.argv[1], sys.argv[2])
    print("held", flush=True)
    sys.stdin.read()
