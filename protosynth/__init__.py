"""protosynth: multimodal dataset distillation by prototype-guided synthesis (PDS) and baselines.

Data flows one way: corpus -> embeddings -> prototypes -> renders -> distilled set -> evaluation.
"""

from .distilled import DistilledSet, load_distilled
from .errors import ProtosynthError

__all__ = ["DistilledSet", "ProtosynthError", "load_distilled"]
__version__ = "0.1.0"
