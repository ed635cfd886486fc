"""``dora demo``: both strategies end to end on shipped FEVER data. ``tiny`` builds tiny models
from configs (the default, minutes); ``pretrained`` runs a real teacher and student
(``--pretrained``); ``common`` is the comparison protocol both share (and ``benchmarks/paper_effect.py``)."""
