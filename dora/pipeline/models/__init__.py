"""Loading models and tokenizers (``loading``), and tiny models built from configs (``scratch``, for the demo and tests)."""
