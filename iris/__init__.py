"""iris: real-time segment publishing from a Redis stream to partner HTTPS endpoints."""

__version__ = "0.1.0"
