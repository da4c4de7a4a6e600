"""The online joiner: impressions + later actions -> labelled, weighted training examples.

Owns: the join in event time with a watermark (``core.py``), reading the event log and writing
examples and dead letters exactly once across crashes (``joiner.py``), the state store that
spills open impressions to SQLite and holds the checkpoint (``state.py``), the open windows in
compiled columns and the join's hot loop over them (``_windows.py``), the example record
and its columnar form (``example.py``), dead letters (``dead_letter.py``), negative
down-sampling and the log-odds correction (``sampling.py``), Parquet output (``parquet.py``),
counters (``metrics.py``), the config (``config.py``), the claim that makes one pipeline the
owner of a set of topics (``owner.py``) and replays of recorded data (``replay.py``). Imports
numpy, numba, msgspec, pyarrow, sqlite3, xxhash, freshrec's base modules and
``freshrec.stream``; ``replay.open_bandit_events`` also loads ``freshrec.data``. The trainer
reads what it writes; nothing here imports the trainer, the PS or the models.
"""

from freshrec.joiner.config import JoinerConfig
from freshrec.joiner.dead_letter import DeadLetter, decode_dead_letters, encode_dead_letters
from freshrec.joiner.example import (
    EXAMPLE_SCHEMA_VERSION,
    Example,
    decode_example,
    decode_examples,
    encode_examples,
    examples_to_columns,
)
from freshrec.joiner.joiner import Joiner, JoinerState
from freshrec.joiner.metrics import JoinerMetrics, prometheus_collector
from freshrec.joiner.parquet import read_examples_parquet
from freshrec.joiner.replay import append_events, open_bandit_events
from freshrec.joiner.sampling import correct_logits, keep_negatives

__all__ = [
    "EXAMPLE_SCHEMA_VERSION",
    "DeadLetter",
    "Example",
    "Joiner",
    "JoinerConfig",
    "JoinerMetrics",
    "JoinerState",
    "append_events",
    "correct_logits",
    "decode_dead_letters",
    "decode_example",
    "decode_examples",
    "encode_dead_letters",
    "encode_examples",
    "examples_to_columns",
    "keep_negatives",
    "open_bandit_events",
    "prometheus_collector",
    "read_examples_parquet",
]
