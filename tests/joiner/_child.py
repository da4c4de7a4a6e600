"""A joiner in a child process, for the crash tests (run as a script, not collected).

    _child.py CONFIG_JSON

CONFIG_JSON holds ``log`` (LogConfig fields) and ``joiner`` (JoinerConfig fields). The child
runs the joiner to the end of the log and drains it, printing ``step N`` after every step and
``done`` with the metrics at the end; the parent SIGKILLs it at some point in between.
"""

from __future__ import annotations

import json
import sys

from freshrec.joiner import Joiner, JoinerConfig, JoinerState
from freshrec.stream import LogConfig, open_log


def main() -> None:
    spec = json.loads(sys.argv[1])
    with open_log(LogConfig(**spec["log"])) as log, Joiner(log, JoinerConfig(**spec["joiner"])) as joiner:
        n = 0
        while joiner.state is JoinerState.RUNNING and (joiner.step() or not joiner.caught_up):
            n += 1
            print("step", n, flush=True)
        if joiner.state is JoinerState.RUNNING:  # else a killed predecessor had drained already
            joiner.drain()
        print("done", json.dumps(joiner.metrics(lag=False).as_dict()), flush=True)


if __name__ == "__main__":
    main()
