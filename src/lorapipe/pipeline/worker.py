"""The detached process that executes one run: ``python -m lorapipe.pipeline.worker --home DIR RUN_ID``.

It runs in its own session, so closing the terminal that started the run does not stop it; `lorapipe runs cancel`
sends it SIGTERM, which it passes on to the backend (the trainer checkpoints, a SageMaker job is stopped).
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

from lorapipe.pipeline.request import PipelineHome
from lorapipe.pipeline.runlog import Cancellation


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lorapipe.pipeline.worker")
    parser.add_argument("--home", required=True)
    parser.add_argument("run_id")
    args = parser.parse_args(argv)
    from lorapipe.pipeline.runner import execute_run

    cancel = Cancellation()
    signal.signal(signal.SIGTERM, lambda signum, frame: cancel.request())
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a closed terminal is not a cancel
    status = execute_run(PipelineHome.resolve(args.home), args.run_id, cancel)
    return 0 if status == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
