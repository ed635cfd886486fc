"""The paper's tasks and their metrics (paper and strict modes)."""
