"""Simulated power loss: the durable state of a store at every sync, rebuilt and checked."""
