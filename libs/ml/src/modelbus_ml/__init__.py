"""modelbus_ml: model families (built-in logreg, River, user entry points), artifact loading,
datasets and metrics (no I/O)."""

from .dataset import Dataset, DatasetError, feature_stats, from_csv_bytes, from_rows, split_holdout
from .evaluation import PROPER_SCORING_RULES, evaluate, roc_auc, row_losses, scores_of
from .families import FAMILIES, FamilyError, Trained, get_family, train_family
from .flavors import (
    FORMATS,
    ArtifactIntegrityError,
    ServableModel,
    describe_artifact,
    load_model,
)
from .logreg import FORMAT, ArtifactError, LogisticModel, train_logreg

__all__ = [
    "FAMILIES",
    "FORMAT",
    "FORMATS",
    "PROPER_SCORING_RULES",
    "ArtifactError",
    "ArtifactIntegrityError",
    "Dataset",
    "DatasetError",
    "FamilyError",
    "LogisticModel",
    "ServableModel",
    "Trained",
    "describe_artifact",
    "evaluate",
    "feature_stats",
    "from_csv_bytes",
    "from_rows",
    "get_family",
    "load_model",
    "roc_auc",
    "row_losses",
    "scores_of",
    "split_holdout",
    "train_family",
    "train_logreg",
]
