"""protosynth: multimodal dataset distillation by prototype-guided synthesis (PDS) and baselines.

Data flows one way: corpus -> embeddings -> prototypes -> renders -> distilled set -> evaluation.
"""

from .errors import ProtosynthError
from .sets.distilled import DistilledSet, load_distilled

__all__ = ["DistilledSet", "ProtosynthError", "load_distilled"]
__version__ = "0.1.0"
