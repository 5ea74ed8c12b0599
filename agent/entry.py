"""The `edge-agent` console script: Ctrl-C while the program is still loading ends it quietly.

The command modules are imported inside `main` so that an interrupt in the first tenth of a
second (imports, argument parsing) exits 130 with one line, as it does later in a command,
rather than with a traceback. Before numpy is loaded it asks for one BLAS thread
(`core/blas_threads.py`: the agent's matrix products are small, and a threaded BLAS spends many
times their CPU), unless the environment sets a count.
"""

from __future__ import annotations

import sys

from water_edge.core.blas_threads import prefer_one_blas_thread

EXIT_INTERRUPTED = 130  # agent.commands._exits.EXIT_INTERRUPTED, not imported: that is the point


def main() -> int:
    prefer_one_blas_thread()
    try:
        from water_edge.agent.cli import main as cli_main

        return cli_main()
    except KeyboardInterrupt:
        sys.stderr.write("edge-agent: interrupted\n")
        return EXIT_INTERRUPTED
