"""The study a search keeps its trials in: Optuna's RDB storage (SQLite by default, or any database URL several
processes share), opened or created, and refused when it was made for another config or search space."""

from __future__ import annotations

import warnings

from tlkeras.errors import ConfigError


def open_study(url: str, name: str, fingerprint: str, sampler, pruner, heartbeat: int = 5, grace: int = 15):
    """The study `name` at `url` (created when missing), maximising; its trials beat every `heartbeat` seconds, and
    one that has not for `grace` seconds (its process died) is marked failed and run again once. A study made for
    another config or space (`fingerprint`) is refused in one line."""
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # tlkeras logs each trial itself
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # the heartbeat's, since 2.8
    try:
        storage = optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat, grace_period=grace,
                                             heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                                                 max_retry=1),
                                             engine_kwargs=_engine_options(url))
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize", sampler=sampler,
                                    pruner=pruner, load_if_exists=True)
    except ImportError as e:
        raise ConfigError(f"storage: {url!r} needs a database driver that is not installed ({e}); install it (e.g. "
                          "pip install psycopg2-binary for postgresql://, pymysql for mysql+pymysql://).") from None
    except Exception as e:  # SQLAlchemy's errors: a URL it cannot parse, a server it cannot reach
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ConfigError(f"storage: {url!r} cannot be opened ({first}); check the URL, that the database is "
                          "running and reachable, and its credentials.") from None
    made_for = study.user_attrs.get("fingerprint")
    if made_for is None:
        study.set_user_attr("fingerprint", fingerprint)
    elif made_for != fingerprint:
        raise ConfigError(f"storage: {url!r} holds a study of another config or search space (fingerprint {made_for}, "
                          f"this search's {fingerprint}); use another output_dir (or storage) for this search, or run "
                          "the same config and space to go on with that one.")
    return study


def _engine_options(url: str) -> dict:
    """SQLite waits for a writer of another process instead of failing at once (two processes on one file)."""
    return {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
