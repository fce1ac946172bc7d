"""A throwaway CA and a loopback server certificate, so the demo and tests can use real HTTPS."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path

import trustme


@dataclass
class TLSMaterial:
    """The CA file clients trust, plus what the server needs to present its certificate."""

    ca_file: Path
    cert_file: Path
    _server_cert: trustme.LeafCert = field(repr=False)

    def server_context(self) -> ssl.SSLContext:
        """A fresh server-side context presenting the 127.0.0.1/localhost certificate."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._server_cert.configure_cert(ctx)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts only our CA (convenience for tests)."""
        return ssl.create_default_context(cafile=str(self.ca_file))


def make_tls(directory: Path) -> TLSMaterial:
    """Create a CA and a server certificate for 127.0.0.1 and localhost under ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="iris demo CA")
    server = ca.issue_cert("127.0.0.1", "localhost")
    ca_file = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert_file = directory / "server-chain.pem"  # public chain only; the key stays in memory
    cert_file.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    return TLSMaterial(ca_file=ca_file, cert_file=cert_file, _server_cert=server)
