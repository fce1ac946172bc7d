"""The pure core: events, routing, batching, the payload, answers and the delivery policy, the
circuit breaker, the records kept in Redis. No asyncio, no Redis, no HTTP: every piece is a
value or a function, tested alone."""
