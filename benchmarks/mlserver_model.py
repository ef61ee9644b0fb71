"""MLServer 1.7 runtime for the online bench: a custom ``MLModel`` wrapping the same numpy
``LogisticModel`` (loaded from the artifact at ``parameters.uri``). Runs inside the throwaway
venv build/mlserver-venv, with libs/ml/src on PYTHONPATH; never imported by the project."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

from modelbus_ml import LogisticModel


class LogRegModel(MLModel):
    async def load(self) -> bool:
        uri = self.settings.parameters.uri
        self.model = LogisticModel.from_bytes(Path(uri).read_bytes())  # noqa: ASYNC240 - once
        self.k = len(self.model.feature_names)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        X = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float64).reshape(-1, self.k)
        if not np.isfinite(X).all():
            raise ValueError("non-finite input")
        scores = self.model.predict_proba(X)
        labels = (scores >= self.model.threshold).astype(np.int64)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[
                NumpyCodec.encode_output("score", scores),
                NumpyCodec.encode_output("label", labels),
            ],
        )
