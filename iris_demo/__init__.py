"""Local stand-ins for a partner (HTTPS, OAuth 2 token endpoint, payload endpoint), for the
demo and the tests: real servers on loopback, strict enough to catch contract violations."""
