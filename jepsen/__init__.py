"""Fault injection and checking for dledger-mq: the deterministic simulator and the harness.

The product never imports this package; it may import anything of the product.
"""
