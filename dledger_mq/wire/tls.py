"""How a client decides whether, and how, to speak TLS to a cluster (docs/security.md, "TLS").

A cluster with TLS on serves TLS on every port; a client must say so: ``tls=`` in the SDK (the
CA's certificate file, or an ``ssl.SSLContext`` of its own), else ``DLEDGER_MQ_TLS_CA`` in the
environment. The client then verifies each node's certificate and that it names the address
it dialled.
"""

from __future__ import annotations

import os
import ssl

from dledger_mq.errors import UsageError

TLS_CA_ENVIRONMENT_VARIABLE = "DLEDGER_MQ_TLS_CA"

#: What the SDK takes as ``tls=``: a CA certificate file, a context, or None (the environment).
TlsOption = ssl.SSLContext | str | None


def client_ssl_context(tls: TlsOption) -> ssl.SSLContext | None:
    """The context a client connects with: ``tls`` itself, one that trusts the CA file it
    names, or (None) the one ``DLEDGER_MQ_TLS_CA`` names; None for plain connections."""
    if isinstance(tls, ssl.SSLContext):
        return tls
    path = tls if tls is not None else os.environ.get(TLS_CA_ENVIRONMENT_VARIABLE, "")
    if not path:
        return None
    try:
        return ssl.create_default_context(cafile=path)
    except (OSError, ssl.SSLError) as error:
        raise UsageError(f"TLS CA file {path}: {error}") from None
