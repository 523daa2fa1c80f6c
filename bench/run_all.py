"""`make bench`: every benchmark in turn, each in its own process, each printing one JSON line.

Allocator settings keep glibc from returning large temporaries to the OS between calls, which
otherwise makes CPU timings page-fault bound and erratic. Set BENCH=name,name to run a subset.
"""

import os
import subprocess
import sys

# The demo prior's time and bits/token come from "demo" (its prior stage), not a bench of their own.
# serve comes after demo: it serves the demo run.
BENCHES = ("quantizer", "quantizers", "tokenizer", "dump_memory", "prior_throughput", "sampling", "inception", "demo",
           "serve")
ALLOCATOR = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "17179869184"}


def main() -> int:
    chosen = os.environ.get("BENCH", ",".join(BENCHES)).split(",")
    failed = []
    for name in chosen:
        done = subprocess.run([sys.executable, "-m", f"bench.{name}"], env={**os.environ, **ALLOCATOR})
        if done.returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
