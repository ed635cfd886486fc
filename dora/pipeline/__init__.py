"""The stages and everything they are built from, in layers (see README, "Where things live").

Stage modules sit here, one per command, each read top to bottom: ``teacher`` (with ``finetune``),
``student``, ``evaluate``, ``demo``, ``report``, ``budget``; ``config`` holds the sections their
configs share. Beneath them, packages that never import a stage: ``kd``, ``train``, ``engines``
(siblings, none imports another), then ``data``, then ``models``, ``tasks``, ``costs``, then
``progress`` and ``checks``. ``tests/test_layers.py`` enforces it.
"""
