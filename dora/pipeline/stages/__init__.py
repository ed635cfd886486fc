"""The stages: one module per command, each read top to bottom (``teacher_label``,
``train_student``, ``evaluate``, ``predict``, ``make_student``, ``select``, ``report``, ``budget``,
``forecast``, ``sweep``), the demos in ``demo/`` around one common module, and ``config``: every
stage's settings, light to import, from which the CLI builds its options.

Stages import the library (``dora.pipeline``'s packages), ``dora.cache`` and the ground floor
(``dora``'s own modules); nothing beneath imports a stage. ``tests/test_layers.py`` enforces it.
"""
