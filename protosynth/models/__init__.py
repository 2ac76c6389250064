"""Models protosynth loads by spec string: CLIP encoders and unCLIP decoders."""
