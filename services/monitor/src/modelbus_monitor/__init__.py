"""modelbus_monitor."""
