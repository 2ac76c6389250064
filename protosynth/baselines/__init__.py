"""The optimisation-based baselines (MTT-VL, LoRS, AMD, RepBlend) on one trajectory-matching engine,
their expert buffers, and ``compare-baselines``."""
