"""The Redis boundary: key names, error replies, streams, recovery, leases, the token store and
the shared rate. The only code that imports redis."""
