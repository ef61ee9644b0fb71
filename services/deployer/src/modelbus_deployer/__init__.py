"""modelbus_deployer."""
