"""Shipped model files (safetensors weights + JSON config)."""

# The shipped weights were trained on music21's folk corpora, which are free for
# non-commercial use only; the code around them is MIT (LICENSE, docs/models.md).
LICENCE = ("licence: the shipped models are for non-commercial use only (trained on music21's "
           "folk corpora; the code is MIT); for other uses train your own on MIDI you have "
           "the rights to (melodyvae corpus --midi DIR)")
