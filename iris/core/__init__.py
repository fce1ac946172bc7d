"""The pure core: events, routing, batching, the payload, answers and the delivery policy, the
circuit breaker, the records kept in Redis, dead-letter reasons and logging with redaction. No
asyncio, no Redis, no HTTP (an import contract checks it): each piece is tested alone, with a
fake clock where time matters."""
