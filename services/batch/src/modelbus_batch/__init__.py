"""modelbus_batch: scores whole CSV or Parquet files in object storage with a model's champion
or a named version (HTTP, BatchScoringRequested, cron), and reports BatchScoringCompleted."""
