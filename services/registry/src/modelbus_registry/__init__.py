"""modelbus_registry: the source of truth for models, versions, aliases and the audit log."""
