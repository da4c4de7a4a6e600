"""Collisionless embedding tables: the paper's idea 1-3 (section 2.1 of Monolith).

Owns: the hash table from int64 IDs to rows (``table.py``), its compiled kernels
(``_kernels.py``), the admission filter and expiry semantics, the per-row optimizers
(``config.py``), and the snapshot format (``snapshot.py``). Imports only numpy, numba,
safetensors and freshrec's base modules (``config``, ``errors``, ``_io``, ``_numba``); the PS,
trainer, sync and serving build on it.
"""

from freshrec.table.config import (
    FTRL,
    SGD,
    Adagrad,
    Adam,
    AdmissionConfig,
    InitializerConfig,
    OptimizerConfig,
    RowwiseAdagrad,
    TableConfig,
)
from freshrec.table.table import EmbeddingTable, TableChanges, TableExport, TableStats

__all__ = [
    "FTRL",
    "SGD",
    "Adagrad",
    "Adam",
    "AdmissionConfig",
    "EmbeddingTable",
    "InitializerConfig",
    "OptimizerConfig",
    "RowwiseAdagrad",
    "TableChanges",
    "TableConfig",
    "TableExport",
    "TableStats",
]
