"""The final model: the best trial retrained on every training image and tested once, or an
ensemble of the best."""

from search.final.ensemble import MEMBERS, retrain_ensemble
from search.final.retrain import RetrainError, retrain_trial

__all__ = ["MEMBERS", "RetrainError", "retrain_ensemble", "retrain_trial"]
