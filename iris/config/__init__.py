"""Configuration: one pydantic model tree, read from YAML, checked once at load."""
