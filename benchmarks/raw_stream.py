"""The baseline of the stream bench: a raw aiokafka loop doing the scorer's stream work and no
more: consume ScoringRequested -> decode the CloudEvent (same ``decode``) -> numpy predict ->
build the PredictionMade caused by it (same deterministic ids) -> ``encode`` -> produce.

At-least-once like the scorer: a batch's offsets are committed after its outputs are acked.
Run: ``python benchmarks/raw_stream.py BOOTSTRAP ARTIFACT.json``.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from pathlib import Path

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from modelbus_contracts import PredictionMade, ScoringRequested, decode, encode
from modelbus_ml import LogisticModel


async def run(bootstrap: str, model: LogisticModel) -> None:
    names = model.feature_names
    consumer = AIOKafkaConsumer(
        ScoringRequested.topic,
        bootstrap_servers=bootstrap,
        group_id="raw-loop",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await consumer.start()
    await producer.start()
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=500, max_records=500)
            pending = []
            for messages in batches.values():
                for message in messages:
                    started = time.perf_counter()
                    event = decode(message.headers, message.value, expected=ScoringRequested)
                    X = np.asarray([[event.features[n] for n in names]], dtype=np.float64)
                    score = float(model.predict_proba(X)[0])
                    pid = uuid.uuid5(event.event_id, "prediction_id/").hex
                    made = event.caused(
                        PredictionMade,
                        producer="raw-loop",
                        event_id=uuid.uuid5(event.event_id, f"{PredictionMade.event_type}/{pid}"),
                        model_name=event.model_name,
                        prediction_id=pid,
                        request_id=event.request_id,
                        version=1,
                        features=dict(event.features),
                        score=score,
                        label=int(score >= model.threshold),
                        served_by="champion",
                        source="stream",
                        latency_ms=(time.perf_counter() - started) * 1000.0,
                    )
                    record = encode(made)
                    headers = [(k, v.encode()) for k, v in record.headers.items()]
                    pending.append(
                        await producer.send(
                            record.topic, record.value, key=record.key, headers=headers
                        )
                    )
            if pending:
                await asyncio.gather(*pending)
                await consumer.commit()
    finally:
        await producer.stop()
        await consumer.stop()


def main() -> None:
    bootstrap, artifact = sys.argv[1], Path(sys.argv[2])
    asyncio.run(run(bootstrap, LogisticModel.from_bytes(artifact.read_bytes())))


if __name__ == "__main__":
    main()
