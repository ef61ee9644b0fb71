"""modelbus_registry."""
