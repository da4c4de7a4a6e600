"""Parameter servers: the one interface through which trainer, sync and serving reach sparse rows.

Owns: the :class:`ParameterServer` interface (``base.py``: pull, push, expire, assign, remove,
change draining for train->serve sync, save/load, stats) and :class:`LocalPS` (``local.py``),
which keeps each logical table as N shards of :class:`~freshrec.table.EmbeddingTable` in this
process and works shards and tables in parallel threads (the table kernels release the GIL).
The same sharding maps onto Ray actors at scale. Imports ``freshrec.table`` and base modules only.
"""

from freshrec.ps.base import ParameterServer, PSChanges
from freshrec.ps.config import PSConfig
from freshrec.ps.local import LocalPS, shard_of

__all__ = ["LocalPS", "PSChanges", "PSConfig", "ParameterServer", "shard_of"]
