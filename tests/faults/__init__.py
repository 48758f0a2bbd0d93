"""Fault injection: ckpt commands SIGKILLed at seeded moments, then the store checked."""
