"""Root conftest: the real-server fixtures are shared by every test package."""

pytest_plugins = ["modelbus_embedded.pytest_plugin"]
