"""Choosing the backbone before fine-tuning it: rank candidates on the user's data by LogME and a
linear probe, one frozen feature pass each (`rank_backbones`), and train the winner
(`backbone="auto:a,b,c"` or a list in `build_and_finetune`)."""

from tlkeras.backbones.candidates import is_auto, parse_candidates
from tlkeras.ranking.logme import logme
from tlkeras.ranking.rank import rank_backbones
from tlkeras.ranking.result import CHART_FILE, RANKING_FILE, Ranking

__all__ = ["rank_backbones", "logme", "Ranking", "is_auto", "parse_candidates", "RANKING_FILE", "CHART_FILE"]
