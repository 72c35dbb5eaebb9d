"""backbone: auto:a,b,c in build_and_finetune: rank the candidates, train the winner."""

from __future__ import annotations

import json
import os
from typing import Optional

from tlkeras._logging import get_logger
from tlkeras.errors import TlkerasError
from tlkeras.backbones.candidates import candidate_label, parse_candidates
from tlkeras.ranking.result import RANKING_FILE, Ranking


def choose_backbone(cfg, *, overwrite: bool = False):
    """(the config with the winner as its backbone, the Ranking). A ranking already in output_dir for the
    same candidates (a run killed after ranking, started again) is used again rather than redone."""
    from tlkeras.ranking.rank import rank_backbones

    candidates = parse_candidates(cfg.backbone)
    _refuse_multi_worker(cfg)
    log = get_logger()
    labels = [candidate_label(c) for c in candidates]
    saved = None if overwrite else load_ranking(cfg.output_dir)
    if saved is not None and sorted(e["backbone"] for e in saved.entries + saved.failed) == sorted(labels):
        log.info("backbone auto: using the ranking in %s (delete it or --overwrite to rank again)",
                 os.path.join(cfg.output_dir, RANKING_FILE))
        ranking = saved
    else:
        ranking = rank_backbones(config=cfg, candidates=candidates)  # by its default score
        for line in ranking.table().splitlines():
            log.info("%s", line)
    if ranking.recommended is None:
        reasons = "; ".join(f"{f['backbone']}: {f['reason']}" for f in ranking.failed)
        raise TlkerasError(f"backbone auto: no candidate could be ranked ({reasons}).")
    winner = next(c for c in candidates if candidate_label(c) == ranking.recommended["backbone"])
    log.info("backbone auto: training %s, the best of %d by %s", ranking.recommended["backbone"], len(candidates),
             ranking.by)
    return cfg.merged({k: v for k, v in winner.items() if k != "name"}), ranking


def load_ranking(folder: Optional[str]) -> Optional[Ranking]:
    """The Ranking saved in folder/ranking.json, or None."""
    path = os.path.join(folder, RANKING_FILE) if folder else None
    if not path or not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return Ranking.from_list(json.load(f))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # unreadable: ranked again


def _refuse_multi_worker(cfg) -> None:
    from tlkeras.distribute import cluster_workers

    machines = cluster_workers(os.environ.get("TF_CONFIG"))
    if cfg.strategy == "multi_worker" or (cfg.strategy == "auto" and machines > 1):
        raise TlkerasError(
            "backbone auto: ranking runs in one process, not across the workers of a cluster (each would rank on "
            "its own, and they could disagree). Rank first with `tlkeras rank --data ... --backbones ...`, then "
            "train the recommended backbone on the cluster with --backbone NAME."
        )


__all__ = ["choose_backbone", "load_ranking"]
