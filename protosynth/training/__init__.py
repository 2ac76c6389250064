"""Trainers: the small CLIP, the small decoder, the evaluation backbones, and the `models train` run."""
