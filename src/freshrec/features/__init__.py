"""Features: the declarative feature spec, ID hashing, and the batch that carries examples.

Owns: :class:`FeatureSpec` (sparse slots with their table settings and sharing, multi-valued
slots with pooling, dense features with transforms, labels; ``spec.py``), turning data columns
into a :class:`Batch` and finding the rows of a failed batch that do encode (``_encode.py``),
seeded 64-bit xxhash of string IDs in a compiled kernel (``hashing.py``, ``_kernels.py``), and
:class:`Batch` / :class:`Jagged` (``batch.py``).
May import numpy, numba, pyarrow, pydantic, and from freshrec only ``config``, ``errors``,
``_numba`` and ``table.config`` (for :class:`TableConfig`). The data loaders, PS, models and
trainer build on it; it imports none of them.
"""

from freshrec.features._encode import encodable_rows, take_rows
from freshrec.features.batch import Batch, Jagged
from freshrec.features.hashing import hash_ids, hash_strings
from freshrec.features.spec import DenseFeature, FeatureSpec, SparseSlot

__all__ = [
    "Batch",
    "DenseFeature",
    "FeatureSpec",
    "Jagged",
    "SparseSlot",
    "encodable_rows",
    "hash_ids",
    "hash_strings",
    "take_rows",
    "warmup",
]


def warmup() -> None:
    """Compile (or load from numba's disk cache) the kernels here, so no request pays for it."""
    from freshrec.features.hashing import warmup as _warm_hashing

    _warm_hashing()
