"""Reference scripts that the framework is measured against (no framework inside them)."""
