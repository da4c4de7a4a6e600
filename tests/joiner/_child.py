"""A joiner in a child process, for the crash tests (run as a script, not collected).

    _child.py CONFIG_JSON

CONFIG_JSON holds ``log`` (LogConfig fields) and ``joiner`` (JoinerConfig fields). The child
runs the joiner to the end of the log and drains it, printing ``done`` with the metrics at the
end; the parent SIGKILLs it at some point in between.

After every step it prints ``step N DIRTY`` (DIRTY is 1 when the examples topic holds records
written after the last checkpoint: a kill now must make the next run suppress them) and waits
for a line on stdin before the next step, so the parent decides exactly where it dies. When
stdin is closed it runs on without waiting.
"""

from __future__ import annotations

import json
import sys

from freshrec.joiner import Joiner, JoinerConfig, JoinerState
from freshrec.stream import LogConfig, open_log


def main() -> None:
    spec = json.loads(sys.argv[1])
    cfg = JoinerConfig(**spec["joiner"])
    with open_log(LogConfig(**spec["log"])) as log, Joiner(log, cfg) as joiner:
        topic = cfg.examples_topic

        def written() -> int:
            return sum(log.end_offset(topic, p) for p in range(log.partitions(topic)))

        # records past the last checkpoint that this run wrote (a predecessor's are not counted)
        n, checkpoints, at_checkpoint, paced = 0, joiner.metrics(lag=False).checkpoints, written(), True
        while joiner.state is JoinerState.RUNNING and (joiner.step() or not joiner.caught_up):
            n += 1
            now = joiner.metrics(lag=False).checkpoints
            if now != checkpoints:  # a checkpoint writes everything, then records the end offsets
                checkpoints, at_checkpoint = now, written()
            print("step", n, int(written() > at_checkpoint), flush=True)
            if paced:
                paced = bool(sys.stdin.readline())
        if joiner.state is JoinerState.RUNNING:  # else a killed predecessor had drained already
            joiner.drain()
        print("done", json.dumps(joiner.metrics(lag=False).as_dict()), flush=True)


if __name__ == "__main__":
    main()
