"""Corpus readers, one short module per format; ``protosynth.corpus`` is the facade that picks one
from the spec string (``load_corpus``) and the place every other module imports from."""
