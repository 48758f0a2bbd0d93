"""Run one ``ckpt`` command line in this process once the imports are done.

The fault tests start this script (not the ``ckpt`` entry point) so that the
seeded kill delay is measured from the moment the command itself starts: the
interpreter's start-up and the imports (~0.15 s, longer than most commands
here) would otherwise swallow most kill points. It prints ``go`` on a line of
its own, then runs exactly what ``ckpt ARGS...`` runs (``ckpt.cli.run``),
reports on stderr how long that took (the "typical duration" the kill delays
are drawn from: interpreter tear-down excluded) and exits with its code.
With ``CKPT_FAULT_HOLD`` set it then waits for a line on stdin before it runs
the command: how a test starts two commands at moments of its choosing (two
interpreters importing at once take ~1 s on two shared cores, longer than
most commands here).
"""

from __future__ import annotations

import os
import sys
import time

# Everything a command may import lazily, imported before "go".
import ckpt.capture_ops
import ckpt.hyperv_export
import ckpt.storage.chunks
from ckpt.cli import run

RAN = "ckpt-fault-driver: ran in"
HOLD = "CKPT_FAULT_HOLD"


def main() -> None:
    assert ckpt.capture_ops and ckpt.hyperv_export and ckpt.storage.chunks
    sys.stdout.write("go\n")
    sys.stdout.flush()
    if os.environ.get(HOLD):
        sys.stdin.readline()
    began = time.perf_counter()
    code = run(sys.argv[1:])
    sys.stderr.write(f"{RAN} {time.perf_counter() - began:.6f}\n")
    sys.exit(code)


if __name__ == "__main__":
    main()
