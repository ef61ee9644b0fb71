"""modelbus_ml: the built-in model family, datasets and metrics (pure numpy, no I/O)."""

from .dataset import Dataset, DatasetError, feature_stats, from_csv_bytes, from_rows, split_holdout
from .evaluation import evaluate, roc_auc
from .logreg import FORMAT, ArtifactError, LogisticModel, train_logreg

__all__ = [
    "FORMAT",
    "ArtifactError",
    "Dataset",
    "DatasetError",
    "LogisticModel",
    "evaluate",
    "feature_stats",
    "from_csv_bytes",
    "from_rows",
    "roc_auc",
    "split_holdout",
    "train_logreg",
]
