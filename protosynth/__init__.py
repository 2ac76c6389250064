"""protosynth: multimodal dataset distillation by prototype-guided synthesis (PDS) and baselines.

Data flows one way: corpus -> embeddings -> prototypes -> renders -> distilled set -> evaluation.

The set reader is imported on first use (PEP 562): it needs torch, and a light module (the configs
behind ``--help`` and flag errors, the corpus index a driver opens) should not pay for it.
"""

from .errors import ProtosynthError

__all__ = ["DistilledSet", "ProtosynthError", "load_distilled"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in ("DistilledSet", "load_distilled"):
        from .sets import distilled  # noqa: PLC0415 (torch: only when a set is read)

        return getattr(distilled, name)
    raise AttributeError(f"module 'protosynth' has no attribute {name!r}")
