"""modelbus_trainer."""
