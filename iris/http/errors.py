"""What went wrong with an HTTP request, in words an operator can act on.

aiohttp's exceptions carry the host, the port and the cause (the TLS verification message, the
socket error); their class name alone ("ClientConnectorCertificateError") does not say whether a
certificate expired or names another host. These texts go into logs and ``dlq_error``; they
never carry a URL's query or credentials.
"""

from __future__ import annotations

import errno
import ssl

import aiohttp

_SOCKET_CAUSES = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset",
    errno.EPIPE: "connection closed while sending",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.ETIMEDOUT: "connection timed out",
}


SERVER_CLOSED = "the server closed the connection before answering"
CUT_SHORT = "the answer was cut short"


def certificate_refused(host: str, port: int | None, cause: BaseException) -> str:
    """The partner's certificate failed verification (``ssl.SSLCertVerificationError``)."""
    reason = getattr(cause, "verify_message", None) or getattr(cause, "reason", None)
    return f"TLS certificate of {host}:{port} refused: {reason or type(cause).__name__}"


def handshake_failed(host: str, port: int | None, cause: OSError) -> str:
    return f"TLS handshake with {host}:{port} failed: {_ssl_reason(cause)}"


def dns_failed(host: str) -> str:
    return f"DNS lookup of {host} failed"


def cannot_connect(host: str, port: int | None, cause: OSError) -> str:
    return f"cannot connect to {host}:{port}: {socket_cause(cause)}"


def describe(exc: BaseException) -> str:
    """One line naming the cause and the host:port of a failed request."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return certificate_refused(exc.host, exc.port, exc.certificate_error)
    if isinstance(exc, aiohttp.ClientConnectorSSLError):
        return handshake_failed(exc.host, exc.port, exc.os_error)
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return dns_failed(exc.host)
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return f"proxy {exc.host}:{exc.port} unreachable: {socket_cause(exc.os_error)}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return cannot_connect(exc.host, exc.port, exc.os_error)
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return f"proxy refused the connection: HTTP {exc.status} {exc.message}"[:160]
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return SERVER_CLOSED
    if isinstance(exc, aiohttp.ClientOSError):
        return socket_cause(exc)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return CUT_SHORT
    if isinstance(exc, aiohttp.InvalidURL):
        return "invalid URL"
    return type(exc).__name__


def is_stale_connection(exc: BaseException) -> bool:
    """How a request fails on a kept-alive connection the server had already closed: the
    connection ends (EOF) before any answer, or the request could not be written on it. A
    reset while waiting for the answer is not taken for it: the server may have been working
    on the request."""
    return isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientConnectionResetError)


def socket_cause(exc: OSError) -> str:
    """The socket error in words ("connection refused"), else its text."""
    return _SOCKET_CAUSES.get(exc.errno or 0) or exc.strerror or type(exc).__name__


def _ssl_reason(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    return exc.strerror or type(exc).__name__
