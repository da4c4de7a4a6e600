"""The online trainer as a child process: ``python -m freshrec.demo.trainer CONFIG.json [IDLE_S]``.

Runs :class:`~freshrec.online.OnlinePipeline` until SIGTERM/SIGINT (or, given ``IDLE_S``, until it
has caught up and stayed idle that long), then checkpoints and exits 0. Started again on the same
run directory, it resumes from its newest good checkpoint.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time

from freshrec.online import OnlineConfig, OnlinePipeline


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s trainer %(levelname)s %(message)s")
    config = OnlineConfig.from_file(argv[0])
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    pipeline = OnlinePipeline(config)
    if pipeline.restored_from is not None:
        logging.info("resumed from %s", pipeline.restored_from)
    idle_s = float(argv[1]) if len(argv) > 1 else None
    try:
        if idle_s is None:
            pipeline.run(stop=stop)
        else:
            _run_until_idle(pipeline, stop, idle_s)
    finally:
        pipeline.close()
    return 0


def _run_until_idle(pipeline: OnlinePipeline, stop: threading.Event, idle_s: float) -> None:
    quiet_since = None
    while not stop.is_set():
        before = pipeline.counters["examples_read"]
        pipeline.round()
        if pipeline.counters["examples_read"] != before or not pipeline.joiner.caught_up:
            quiet_since = None
            continue
        quiet_since = quiet_since or time.monotonic()
        if time.monotonic() - quiet_since >= idle_s:
            return
        time.sleep(0.01)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
