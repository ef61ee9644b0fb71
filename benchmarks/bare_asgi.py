"""The baseline of the online bench: a raw ASGI callable (no framework) serving the same
``LogisticModel`` on the same Open Inference Protocol v2 path, with orjson, under uvicorn
(uvloop + httptools). It validates what it reads (shape, datatype, finite numbers) but keeps no
metrics, no prediction log and no model holder: the floor a framework-based scorer is held to.

Run: ``python benchmarks/bare_asgi.py ARTIFACT.json PORT``.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import uvicorn

from modelbus_ml import LogisticModel

JSON_HEADERS = [(b"content-type", b"application/json")]


def build(model: LogisticModel, name: str) -> Any:
    k = len(model.feature_names)
    path = f"/v2/models/{name}/infer".encode()

    async def respond(send: Any, status: int, body: Any) -> None:
        payload = orjson.dumps(body)
        headers = [*JSON_HEADERS, (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    def parse(body: bytes) -> tuple[np.ndarray, Any]:
        doc = orjson.loads(body)
        [tensor] = doc["inputs"]
        rows, cols = tensor["shape"]
        data = tensor["data"]
        if cols != k or len(data) != rows * cols or tensor["datatype"] not in ("FP32", "FP64"):
            raise ValueError("bad tensor")
        if not all(type(v) in (int, float) and math.isfinite(v) for v in data):
            raise ValueError("not a finite number")
        return np.asarray(data, dtype=np.float64).reshape(rows, cols), doc.get("id")

    async def app(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["method"] == "GET":
            await respond(send, 200, {"ready": True})
            return
        if scope["raw_path"] != path:
            await respond(send, 404, {"error": "not found"})
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        try:
            X, request_id = parse(body)
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
            await respond(send, 422, {"error": str(exc)})
            return
        scores = model.predict_proba(X)
        labels = (scores >= model.threshold).astype(np.int64)
        n = len(scores)
        await respond(
            send,
            200,
            {
                "model_name": name,
                "model_version": "1",
                "id": request_id,
                "outputs": [
                    {"name": "score", "datatype": "FP64", "shape": [n], "data": scores.tolist()},
                    {"name": "label", "datatype": "INT64", "shape": [n], "data": labels.tolist()},
                ],
            },
        )

    return app


def main() -> None:
    artifact, port, name = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    app = build(LogisticModel.from_bytes(artifact.read_bytes()), name)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        lifespan="on",
    )


if __name__ == "__main__":
    main()
