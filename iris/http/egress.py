"""Which proxy a request goes through: the destination's own ``proxy``, else the environment's
(``HTTPS_PROXY``, ``HTTP_PROXY``, ``NO_PROXY``, read as Python's urllib reads them).

aiohttp's ``trust_env`` would read the proxy variables too, but it also applies ``~/.netrc``
credentials to the partner itself: with a ``default`` entry, every request that carries its own
Authorization header fails, and the others send the netrc password to the partner. So iris
reads the proxy variables itself, and nothing else from the environment.
"""

from __future__ import annotations

from urllib.parse import urlsplit
from urllib.request import (  # type: ignore[attr-defined]  # CPython has it; typeshed not
    getproxies_environment,
    proxy_bypass_environment,
)


def proxy_for(url: str, configured: str | None) -> str | None:
    """The proxy URL for a request to ``url``, or None to go direct."""
    if configured:
        return configured
    parts = urlsplit(url)
    proxies = getproxies_environment()
    proxy = proxies.get(parts.scheme)
    if not proxy or proxy_bypass_environment(parts.hostname or "", proxies):
        return None
    return proxy
