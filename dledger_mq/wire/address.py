"""HOST:PORT addresses as they appear in configs, registrations and hints."""

from __future__ import annotations

import attrs


@attrs.frozen
class Address:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Address:
        host, separator, port = text.rpartition(":")
        if not separator or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected HOST:PORT, got {text!r}")
        return cls(host, int(port))

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"
