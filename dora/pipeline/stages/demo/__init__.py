"""``dora demo``: both strategies end to end on shipped FEVER data. ``tiny`` builds tiny models
from configs (the default, minutes); ``pretrained`` runs a real teacher and student
(``--pretrained``); ``common`` holds the comparison protocol ``pretrained`` runs (as does
``benchmarks/paper_effect.py``) and the helpers ``tiny`` borrows from it."""
