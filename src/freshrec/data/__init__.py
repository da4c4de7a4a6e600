"""Real data sets: loaders that turn files into a :class:`Dataset` of feature batches.

Owns: the in-memory :class:`Dataset` (time order, time split, batching; ``dataset.py``), the
loaders for MovieLens (``movielens.py``), Criteo (``criteo.py``), Open Bandit
(``open_bandit.py``) and generic Parquet/CSV files with a column mapping (``table_file.py``),
the pyarrow reading helpers that turn parse failures into clear errors (``_read.py``), and
where the shared data sets live (``$FRESHREC_DATA``, ``paths.py``).
May import numpy, pyarrow, and from freshrec ``features``, ``config`` and ``errors``; nothing
else in freshrec imports it except the trainer's job (``train/job.py``), the joiner's replay and the
experiments.
"""

from freshrec.data.criteo import criteo_spec, load_criteo, stream_criteo
from freshrec.data.dataset import Column, Dataset, drop_repeats, rebatch
from freshrec.data.movielens import load_movielens, movielens_spec
from freshrec.data.open_bandit import load_open_bandit, open_bandit_spec
from freshrec.data.paths import DEFAULT_DATASETS, default_data
from freshrec.data.table_file import ColumnMapping, load_table_file, stream_table_file

__all__ = [
    "DEFAULT_DATASETS",
    "Column",
    "ColumnMapping",
    "Dataset",
    "criteo_spec",
    "default_data",
    "drop_repeats",
    "load_criteo",
    "load_movielens",
    "load_open_bandit",
    "load_table_file",
    "movielens_spec",
    "open_bandit_spec",
    "rebatch",
    "stream_criteo",
    "stream_table_file",
]
