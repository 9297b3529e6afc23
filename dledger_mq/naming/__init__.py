"""Naming: stateless route registries that brokers register with and clients ask."""
