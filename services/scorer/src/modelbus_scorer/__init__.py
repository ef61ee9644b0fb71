"""modelbus_scorer: serves each model's champion over HTTP (native + Open Inference Protocol v2)
and Kafka stream scoring, hot-swaps on promotion, keeps the last-good model warm."""
