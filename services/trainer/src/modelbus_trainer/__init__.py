"""modelbus_trainer: trains models on request or drift and announces them with ModelTrained."""
