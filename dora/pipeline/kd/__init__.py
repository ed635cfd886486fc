"""Distillation: pure losses, cross-tokenizer alignment, and one objective object per ``--kd-loss``."""
