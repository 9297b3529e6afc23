"""The wire format shared by peers and clients: frames, the codec, the handshake, error replies."""
