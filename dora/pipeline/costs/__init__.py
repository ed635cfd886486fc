"""What a stage cost: the append-only ledger each stage writes, and pricing it in dollars."""
