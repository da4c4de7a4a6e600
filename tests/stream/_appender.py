"""A child process for the embedded log's cross-process tests (run as a script, not collected).

_appender.py crash  PATH TOPIC BATCH       append batches forever, printing "begin I" before
                                           and "done I" after each (the parent SIGKILLs us)
_appender.py stream PATH TOPIC TOTAL SEED  append records 0..TOTAL-1 in random batches
_appender.py wal    PATH TOPIC BATCHES     append with checkpoints off, print the WAL size
                                           after each append, exit without closing
"""

from __future__ import annotations

import os
import random
import sys

from freshrec.stream import open_log


def main() -> None:
    mode, path, topic = sys.argv[1:4]
    if mode == "crash":
        size = int(sys.argv[4])
        log = open_log(path=path)
        first = sum(log.end_offset(topic, p) for p in range(log.partitions(topic))) // size
        pad = b"x" * 120
        for i in range(first, 1 << 30):
            values = [b"%d:%d:%s" % (i, j, pad) for j in range(size)]
            print("begin", i, flush=True)
            log.append(topic, values, [b"k%d" % j for j in range(size)])
            print("done", i, flush=True)
    elif mode == "stream":
        total, seed = int(sys.argv[4]), int(sys.argv[5])
        rng = random.Random(seed)
        with open_log(path=path) as log:
            n = 0
            while n < total:
                m = min(rng.randint(1, 400), total - n)
                log.append(
                    topic,
                    [b"%d" % i for i in range(n, n + m)],
                    [b"key%d" % (i % 97) for i in range(n, n + m)],
                )
                n += m
    elif mode == "wal":
        batches = int(sys.argv[4])
        log = open_log(path=path, wal_autocheckpoint_pages=0)
        wal = os.path.join(path, "log.sqlite-wal")
        for i in range(batches):
            log.append(topic, [b"%d:%d" % (i, j) for j in range(100 + 37 * i)], partition=0)
            print(os.path.getsize(wal), flush=True)
        os._exit(0)  # no close(): closing the last connection would checkpoint and delete the WAL


if __name__ == "__main__":
    main()
