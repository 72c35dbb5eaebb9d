"""`tlkeras tune`: a search of the two-stage recipe on the user's data (Optuna), its trials sharing the data, the
model and the cached features (see `tlkeras.tuning.search`)."""

from tlkeras.tuning.space import SearchSpace, default_space
from tlkeras.tuning.search import TuneResult, tune

__all__ = ["SearchSpace", "TuneResult", "default_space", "tune"]
