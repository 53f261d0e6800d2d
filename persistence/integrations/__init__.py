"""Optional integrations with web frameworks. Each submodule imports its framework itself, so
importing `persistence` (or this package) never imports one: `persistence.integrations.fastapi`
needs the `persistence[fastapi]` extra."""
