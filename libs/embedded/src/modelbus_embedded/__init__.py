"""modelbus_embedded."""
