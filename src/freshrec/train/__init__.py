"""Training: one trainer for batch files and endless streams, with progressive validation.

Owns the trainer (``trainer.py``: one ``step`` for both stages of the paper, NaN/Inf-safe), the
bridge that pulls sparse rows from the PS, pools them per slot and pushes merged gradients
(``sparse.py``), quality metrics and their sliding-window form (``metrics.py``), the trainer's
config (``config.py``), the model directory format (``model_dir.py``), and the ``freshrec
train`` job over files (``job.py``: its data source and baselines), and ``freshrec evaluate``
of a saved model on a file (``evaluate.py``). Imports ``ps``, ``models``,
``features``, ``data`` (the job only) and base modules; sync and serving build on it, never
the reverse.
"""

from freshrec.train.config import TrainConfig
from freshrec.train.metrics import StreamingMetrics, calibration, logloss, weighted_auc
from freshrec.train.model_dir import read_manifest
from freshrec.train.trainer import StepResult, Trainer, TrainerState

__all__ = [
    "StepResult",
    "StreamingMetrics",
    "TrainConfig",
    "Trainer",
    "TrainerState",
    "calibration",
    "logloss",
    "read_manifest",
    "weighted_auc",
]
