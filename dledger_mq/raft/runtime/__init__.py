"""The Trio runtime of a replica: its shell around the driver, the peer transport, the
log writer."""
