"""modelbus_scorer."""
