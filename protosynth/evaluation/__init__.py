"""Retrieval evaluation: protocols (nfnet-bert, pds, small), backbones, text encoders, training."""
