"""modelbus_platform."""
