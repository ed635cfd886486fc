"""The stages and the library they are built from.

``stages/`` holds one module per command. Beneath it, the library, in layers: ``train``; then
``kd`` and ``engines`` (siblings, neither imports the other); then ``data``; then ``models``,
``tasks`` and ``costs``. Beneath the pipeline: ``dora.cache`` (the label-cache format), then the
ground floor, ``dora``'s own modules (errors, files, locks, progress, checks).
``tests/test_layers.py`` enforces the direction, folder by folder, and that no import circle exists.
"""
