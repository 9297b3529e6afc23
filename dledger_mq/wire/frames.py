"""Length-prefixed frames over a byte stream, sans I/O (in the manner of h11 and wsproto).

A frame is a 4-byte big-endian length followed by that many payload bytes. ``FrameDecoder`` is
fed whatever the socket returned and hands out whole payloads; it refuses a frame larger than
its limit as soon as the length is read, before buffering it.
"""

from __future__ import annotations

import struct

from dledger_mq.errors import FrameTooLarge

_LENGTH = struct.Struct(">I")
DEFAULT_MAX_FRAME_BYTES = 64 << 20


def encode_frame(payload: bytes) -> bytes:
    return _LENGTH.pack(len(payload)) + payload


def encode_frames(payloads: list[bytes]) -> bytes:
    """Many frames in one buffer, so that one write sends them all."""
    parts = []
    for payload in payloads:
        parts.append(_LENGTH.pack(len(payload)))
        parts.append(payload)
    return b"".join(parts)


class FrameDecoder:
    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()

    def receive_data(self, data: bytes | bytearray) -> None:
        self._buffer += data

    def next_frames(self) -> list[bytes]:
        """Every whole frame received so far; raises ``FrameTooLarge`` on an oversized one."""
        frames = []
        buffer = self._buffer
        position = 0
        while len(buffer) - position >= 4:
            (length,) = _LENGTH.unpack_from(buffer, position)
            if length > self.max_frame_bytes:
                raise FrameTooLarge(
                    f"frame of {length} bytes exceeds the limit of {self.max_frame_bytes}"
                )
            end = position + 4 + length
            if len(buffer) < end:
                break
            frames.append(bytes(buffer[position + 4 : end]))
            position = end
        if position:
            del buffer[:position]
        return frames

    def next_frame(self) -> bytes | None:
        """The first whole frame received so far, leaving the rest buffered."""
        buffer = self._buffer
        if len(buffer) < 4:
            return None
        (length,) = _LENGTH.unpack_from(buffer, 0)
        if length > self.max_frame_bytes:
            raise FrameTooLarge(
                f"frame of {length} bytes exceeds the limit of {self.max_frame_bytes}"
            )
        if len(buffer) < 4 + length:
            return None
        frame = bytes(buffer[4 : 4 + length])
        del buffer[: 4 + length]
        return frame

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer)
