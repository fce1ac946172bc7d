"""The HTTP boundary: sessions, sending a batch, the token endpoint, proxies, what an error
means. The only code that imports aiohttp's client."""
