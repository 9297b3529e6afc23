"""TLS for a node: the ``ssl`` contexts its listeners and links use, and the local CA and node
certificates `cluster up --tls` makes (with ``cryptography``).

One CA signs every node's certificate. A node's certificate names its hosts (IP addresses and
names) as subject alternative names, and serves both as its server certificate (client port,
naming port, the accepting end of a peer link) and as its client certificate on the peer
links it opens: peers verify each other against the CA (mutual TLS), clients verify the node.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import stat
from pathlib import Path

import attrs

from dledger_mq.errors import UsageError
from dledger_mq.node.config import NodeConfig
from dledger_mq.raft.storage.disk import OsDisk, write_file_atomically

#: Under `cluster up`'s root (the CA) and each node's folder (its certificate and key).
TLS_DIRECTORY_NAME = "tls"
CA_FILE_NAME = "ca.pem"
CA_KEY_FILE_NAME = "ca.key"
CERT_FILE_NAME = "node.pem"
KEY_FILE_NAME = "node.key"
#: How long what `cluster up --tls` makes is valid: a laptop cluster, not a deployment.
VALIDITY_DAYS = 825


@attrs.frozen
class NodeTls:
    """A node's contexts: ``server`` for its client and naming listeners, ``peer_server`` and
    ``peer_client`` (both requiring the CA's certificate of the other end) for peer links,
    ``client`` for what it connects to as a client (naming nodes)."""

    server: ssl.SSLContext
    peer_server: ssl.SSLContext
    peer_client: ssl.SSLContext
    client: ssl.SSLContext


def node_tls(config: NodeConfig) -> NodeTls | None:
    """The contexts ``config``'s TLS files make; None without TLS. ``UsageError`` for a file
    that is missing, unreadable or (the key) readable by others."""
    if not config.tls_cert_file:
        return None
    server = server_ssl_context(config.tls_cert_file, config.tls_key_file)
    try:
        peer_server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=config.tls_ca_file)
        peer_server.load_cert_chain(config.tls_cert_file, config.tls_key_file)
        peer_server.verify_mode = ssl.CERT_REQUIRED
        peer_client = ssl.create_default_context(cafile=config.tls_ca_file)
        peer_client.load_cert_chain(config.tls_cert_file, config.tls_key_file)
        client = ssl.create_default_context(cafile=config.tls_ca_file)
    except (OSError, ssl.SSLError) as error:
        raise UsageError(f"TLS files of {config.node_id}: {error}") from None
    return NodeTls(server, peer_server, peer_client, client)


def server_ssl_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A listener's context: this certificate, clients not asked for one."""
    _check_private(key_file)
    try:
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as error:
        raise UsageError(f"TLS files {cert_file}, {key_file}: {error}") from None
    return server


def _check_private(path: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        raise UsageError(f"TLS key file {path}: {error.strerror or error}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UsageError(
            f"TLS key file {path}: mode {stat.S_IMODE(mode):04o}: others may read it (chmod 600)"
        )


# -- what `cluster up --tls` makes -----------------------------------------------------------


def make_local_ca(directory: Path) -> None:
    """A new CA key and self-signed certificate in ``directory`` (the key mode 0600)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dledger-mq local CA")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALIDITY_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    _write(directory / CA_KEY_FILE_NAME, _key_pem(key), private=True)
    _write(directory / CA_FILE_NAME, _certificate_pem(certificate))


def make_node_certificate(
    ca_directory: Path, directory: Path, node_id: str, hosts: list[str]
) -> None:
    """A key and a certificate for ``node_id`` naming ``hosts``, signed by the CA in
    ``ca_directory``, in ``directory`` (the key mode 0600)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_key = serialization.load_pem_private_key(
        (ca_directory / CA_KEY_FILE_NAME).read_bytes(), password=None
    )
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca = x509.load_pem_x509_certificate((ca_directory / CA_FILE_NAME).read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALIDITY_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write(directory / KEY_FILE_NAME, _key_pem(key), private=True)
    _write(directory / CERT_FILE_NAME, _certificate_pem(certificate))


def node_tls_settings(
    ca_directory: Path, directory: Path, node_id: str, hosts: list[str]
) -> dict[str, object]:
    """A certificate for ``node_id`` under ``directory/tls`` (the CA under ``ca_directory``
    made first if there is none), and the ``node.toml`` keys that name the files."""
    if not (ca_directory / CA_FILE_NAME).exists():
        make_local_ca(ca_directory)
    tls_directory = directory / TLS_DIRECTORY_NAME
    make_node_certificate(ca_directory, tls_directory, node_id, hosts)
    return {
        "tls_cert_file": str(tls_directory / CERT_FILE_NAME),
        "tls_key_file": str(tls_directory / KEY_FILE_NAME),
        "tls_ca_file": str(ca_directory / CA_FILE_NAME),
    }


def _key_pem(key: object) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _certificate_pem(certificate: object) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    assert isinstance(certificate, x509.Certificate)
    return certificate.public_bytes(serialization.Encoding.PEM)


def _write(path: Path, data: bytes, private: bool = False) -> None:
    """Durably; a private file is made with mode 0600 before a byte of it is written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if private:
        # The temporary file write_file_atomically makes takes the umask's mode: under 077
        # it is the owner's only from its creation.
        old = os.umask(0o077)
        try:
            write_file_atomically(OsDisk(), str(path), data)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
    else:
        write_file_atomically(OsDisk(), str(path), data)
