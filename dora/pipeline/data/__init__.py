"""Inputs: reading and validating user files, the streamed pool, tokenising sources and targets."""
