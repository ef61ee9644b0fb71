"""modelbus_deployer: judges each registered model against the champion and emits the verdict."""
