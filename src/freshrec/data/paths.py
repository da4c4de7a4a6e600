"""Where the shared data sets live: ``$FRESHREC_DATA``, else ``../shared/data`` (the project's
data seen from its root). Read when a path is needed, so a variable set later still applies."""

from __future__ import annotations

import os
from pathlib import Path

# the data set each format reads when no path is given (relative to the data root)
DEFAULT_DATASETS = {
    "movielens": "ml-100k",
    "criteo": "criteo-sample/train.txt",
    "open_bandit": "open-bandit/random/all",
}


def default_data(name: str) -> str:
    """``$FRESHREC_DATA/name``, or ``../shared/data/name``."""
    root = os.environ.get("FRESHREC_DATA")
    return str(Path(root) / name) if root else f"../shared/data/{name}"
