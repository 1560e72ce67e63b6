"""The predictor: a study's trials in, a :class:`~hptransfer.transfer.prediction.Prediction` out.

:func:`predict_hparams` reads a study from storage; :func:`predict_from_trials` runs the
three steps on its records: the optimum of each usable width
(:mod:`hptransfer.study.optimum`), the fit against width (:mod:`hptransfer.transfer.fit`)
and the rules to the target (:mod:`hptransfer.transfer.rules`), with the closed-form
baselines (:mod:`hptransfer.transfer.baselines`) to compare against.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from hptransfer.errors import ConfigError, PredictionError, StudyError, explain_fields
from hptransfer.hparams import MULTIPLIERS, HParams
from hptransfer.models.registry import family_of
from hptransfer.spec import DepthRule, ModelSpec
from hptransfer.study.config import StudyConfig
from hptransfer.study.ladder import chosen_multipliers, multipliers_of
from hptransfer.study.optimum import BAND, BOOTSTRAP, WINDOW_OCTAVES, fit_width, seed_noise
from hptransfer.study.schema import TrialRecord, TrialStatus
from hptransfer.transfer.baselines import baselines
from hptransfer.transfer.fit import transfer_fits
from hptransfer.transfer.prediction import Evidence, Prediction
from hptransfer.transfer.regret import expected_regret
from hptransfer.transfer.rules import (
    HORIZON_EXPONENT,
    HORIZON_EXPONENT_RANGE,
    Notes,
    judge_width_fits,
    lr_at_target,
    weight_decay_at_target,
)
from hptransfer.transfer.vocabulary import VocabularyMismatch, judge_vocabulary

__all__ = ["PredictionError", "check_model", "predict_from_trials", "predict_hparams"]

MIN_COMPLETE = 3  # completed trials a width needs (a parabola needs three LRs)
# A horizon no training run approaches (the largest public ones are ~10^14 tokens): a
# larger target_tokens is a typo (an exponent too many), not a run to plan for
MAX_TARGET_TOKENS = 10**16


def _usable_widths(records: list[TrialRecord], study: str) -> tuple[dict[int, list], list[str]]:
    by_width: dict[int, list[TrialRecord]] = {}
    for record in records:
        by_width.setdefault(record.width, []).append(record)
    counts = {w: sum(1 for r in rows if r.status is TrialStatus.COMPLETE and r.final_val_loss
                     is not None and math.isfinite(r.final_val_loss))
              for w, rows in sorted(by_width.items())}
    listing = ", ".join(f"width {w}: {n} completed" for w, n in counts.items()) or "no trials"
    empty = [w for w, n in counts.items() if n == 0]
    if empty:
        raise PredictionError(
            f"study {study!r} has no completed trials at width(s) {empty} ({listing}); run "
            f"them first (hptransfer tune --study {study} --widths "
            f"{','.join(map(str, counts))} tops the study up), or check their status with "
            f"hptransfer status --study {study}")
    usable = {w: by_width[w] for w, n in counts.items() if n >= MIN_COMPLETE}
    if len(usable) < 2:
        raise PredictionError(
            f"study {study!r} cannot support a prediction: it needs at least two widths with "
            f"{MIN_COMPLETE} or more completed trials each ({listing}); tune a second width, "
            f"e.g. hptransfer tune --study {study} --widths 32,64")
    notes = [f"width {w} left out: {n} completed trial(s), fewer than {MIN_COMPLETE}"
             for w, n in counts.items() if 0 < n < MIN_COMPLETE]
    return usable, notes


def predict_from_trials(records: list[TrialRecord], config: StudyConfig, target_width: int, *,
                        study: str = "proxy", target_depth: int | None = None,
                        target_tokens: int | None = None, target_batch: int | None = None,
                        horizon_exponent: float | None = None,
                        bootstrap: int = BOOTSTRAP, seed: int = 0, band: float = BAND,
                        window: float = WINDOW_OCTAVES, target_vocab: int | None = None,
                        vocab_mismatch: VocabularyMismatch = VocabularyMismatch.REFUSE,
                        target_tokenizer_hash: str | None = None) -> Prediction:
    """The prediction from a study's trial records and config (what
    :func:`predict_hparams` reads from storage); arguments as there."""
    if config.space.lr is None:
        raise PredictionError(f"study {study!r} did not search the learning rate (its search "
                              f"space fixes lr): there is no LR optimum to transfer; tune "
                              f"one with an --lr-range")
    if bootstrap < 50:
        raise PredictionError(f"bootstrap={bootstrap} is too few resamples for a 95% "
                              f"interval; use at least 50 (default 1000)")
    for name, value in (("target_depth", target_depth), ("target_tokens", target_tokens),
                        ("target_batch", target_batch)):
        if value is not None and value < 1:
            raise PredictionError(f"{name} must be a positive integer, got {value}")
    if target_tokens is not None and target_tokens > MAX_TARGET_TOKENS:
        raise PredictionError(f"target_tokens={target_tokens:.3g} is more than any training "
                              f"run reads (at most {MAX_TARGET_TOKENS:.0e} here): check the "
                              f"exponent (2e9 is two billion tokens)")
    beta_low, beta_high = HORIZON_EXPONENT_RANGE
    if horizon_exponent is not None and not beta_low <= horizon_exponent <= beta_high:
        raise PredictionError(
            f"horizon_exponent={horizon_exponent:g} is outside [{beta_low:g}, {beta_high:g}]: "
            f"β is the exponent in η* ∝ D^−β, positive when the optimum LR falls as training gets "
            f"longer (a steps study's drift per doubling of tokens is −β); the literature "
            f"default is {HORIZON_EXPONENT}")
    notes = Notes()
    # before any fit: a vocabulary nothing measured is refused at once, with the fix
    judge_vocabulary(config.spec.vocab, target_vocab, notes, vocab_mismatch,
                     proxy_tokenizer=config.corpus.tokenizer_hash if config.corpus else None,
                     target_tokenizer=target_tokenizer_hash)
    try:
        spec = ModelSpec(**{**config.spec.model_dump(), "width": target_width,
                            "depth": target_depth or config.spec.depth,
                            "vocab": target_vocab or config.spec.vocab})
    except ValueError as error:
        raise PredictionError(f"target width {target_width}: {explain_fields(error)}"
                              ) from None

    if spec.model != "builtin":  # a factory may not build at every width: say so here
        from hptransfer.models.registry import role_table

        try:
            role_table(spec)
        except ConfigError as error:
            raise PredictionError(f"target width {target_width}: {error}") from None
    usable, left_out = _usable_widths(records, study)
    rng = np.random.default_rng(seed)
    # steps 1–6 of the ladder run at the base multipliers: the seed replicates are there
    base_multipliers = multipliers_of(config.space.base)
    noise = seed_noise([r for r in records if r.hparams is not None
                        and multipliers_of(r.hparams) == base_multipliers], config)
    multipliers = base_multipliers
    if config.space.multipliers is not None:
        first = min(usable)
        multipliers = chosen_multipliers(config, first, usable[first])
        notes.rule("multipliers",
                   ", ".join(f"{name} {value:g}" for name, value in
                             zip(MULTIPLIERS, multipliers, strict=True))
                   + f": chosen on width {first} (the ladder's multipliers step), held at "
                     f"every width (µP makes them width-independent)")
        # every width's bowl is read where it was searched: at the chosen multipliers
        usable = {w: [r for r in rows if r.hparams is not None
                      and multipliers_of(r.hparams) == multipliers]
                  for w, rows in usable.items()}
    fits = [fit_width(w, rows, config, band=band, window=window, bootstrap=bootstrap,
                      rng=rng, noise=noise.shape if noise is not None else None)
            for w, rows in sorted(usable.items())]
    if target_width < min(usable):
        notes.warnings.append(
            f"the target width {target_width} is narrower than every proxy ({min(usable)} and "
            f"up): the fit is read backwards, which µP allows, but a width you can afford to "
            f"tune is better tuned directly")
    notes.warnings += left_out + [f"width {fit.evidence.width}: {flag}" for fit in fits
                                  for flag in fit.evidence.flags
                                  if not flag.startswith("note:")]
    notes.warnings += [f"model: {note}" for note in family_of(spec).limitations(spec)]
    transfer, zero = transfer_fits(fits, config, target_width)
    judge_width_fits(transfer, config, target_width, max(usable), notes)

    proxy_batch, batch_interval = config.space.base.batch_size, None
    if "batch_size" in transfer:
        low, high = transfer["batch_size"].target_interval
        batch_interval = (float(2 ** round(low)), float(2 ** round(high)))
        proxy_batch = 2 ** round(transfer["batch_size"].target)
    if target_batch is not None and target_batch != proxy_batch:
        batch_interval = None  # chosen by the user, not estimated
    proxy_tokens = config.tokens_per_trial()
    bounds = [f.evidence.diverged_lr for f in fits if f.evidence.diverged_lr is not None]
    lr, lr_low, lr_high = lr_at_target(
        transfer["lr"], bounds, proxy_batch=proxy_batch, target_batch=target_batch,
        proxy_tokens=proxy_tokens, target_tokens=target_tokens,
        horizon_exponent=horizon_exponent, notes=notes)
    wd, wd_interval = weight_decay_at_target(transfer.get("weight_decay"), zero, config,
                                              target_width, notes)
    if wd > 0 and (target_tokens is not None or target_batch is not None):
        notes.warnings.append("λ is not rescaled for a different horizon or batch (keeping "
                              "the AdamW timescale τ = 1/(ηλ) in epochs, Wang & Aitchison "
                              "2024, is future work)")
    if target_depth is not None and target_depth != config.spec.depth:
        if config.spec.depth_rule is DepthRule.COMPLETEP:
            notes.rule("depth-completep",
                       f"the proxies scale each residual branch by L₀/L (CompleteP, L₀ = "
                       f"{config.spec.base_depth}): the hparams transfer from depth "
                       f"{config.spec.depth} to {target_depth} unchanged, and the target "
                       f"must use the same rule (Dey et al. 2025; docs/reproduction.md has "
                       f"our depth study)")
        else:
            notes.warnings.append(
                f"depth transfer is not supported by this parametrization: the proxies have "
                f"depth {config.spec.depth}, the target {target_depth}, and the study has no "
                f"depth rule (--depth-rule completep, docs/spec.md §4); the hparams are those "
                f"for depth {config.spec.depth}")

    hparams = HParams(**{**config.space.base.model_dump(), "lr": 2.0**lr, "weight_decay": wd,
                         "batch_size": target_batch or proxy_batch,
                         **dict(zip(MULTIPLIERS, multipliers, strict=True))})
    intervals: dict[str, tuple[float, float]] = {"lr": (2.0**lr_low, 2.0**lr_high)}
    if wd_interval is not None:
        intervals["weight_decay"] = wd_interval
    if batch_interval is not None:
        intervals["batch_size"] = batch_interval
    tokens = target_tokens or proxy_tokens
    evidence = Evidence(widths=tuple(f.evidence for f in fits), fits=transfer,
                        searched=tuple(transfer), proxy_depth=config.spec.depth,
                        proxy_tokens=proxy_tokens, proxy_batch=proxy_batch,
                        bootstrap=bootstrap, seed=seed, band=band, window_octaves=window,
                        seed_noise=noise)
    return Prediction(study=study, target_width=target_width, target_depth=spec.depth,
                      target_tokens=tokens, spec=spec, hparams=hparams, intervals=intervals,
                      rules=tuple(notes.rules), warnings=tuple(notes.warnings),
                      evidence=evidence, baselines=baselines(records, fits, spec, tokens),
                      regret=expected_regret(evidence.widths, lr, (lr_low, lr_high)))


def check_model(study: str, config: StudyConfig, model: str | None) -> None:
    """Refuse a ``--model`` that is not the family study ``study`` was tuned on."""
    if model is not None and model != config.spec.model:
        raise PredictionError(f"study {study!r} was tuned with --model {config.spec.model}, "
                              f"not {model}: give --model {config.spec.model}, or tune a "
                              f"study of {model}")


def predict_hparams(target_width: int, *, study: str = "proxy", storage: Any = None,
                    target_depth: int | None = None, target_tokens: int | None = None,
                    target_batch: int | None = None, horizon_exponent: float | None = None,
                    bootstrap: int = BOOTSTRAP, seed: int = 0, model: str | None = None,
                    target_vocab: int | None = None,
                    vocab_mismatch: VocabularyMismatch = VocabularyMismatch.REFUSE,
                    target_tokenizer_hash: str | None = None) -> Prediction:
    """Predict the hparams of a model of width ``target_width`` from study ``study``.

    ``storage`` is an Optuna storage or URL (None: ``$HPTRANSFER_HOME/studies.db``).
    ``target_tokens`` and ``target_batch`` (sequences) default to the proxies' own; the
    rules that move the LR for them are listed in ``Prediction.rules``.
    ``horizon_exponent`` is β of the horizon rule η* ∝ D^−β (None: the literature default
    ``HORIZON_EXPONENT``; a steps study such as ``studies/horizon.toml`` measures it).
    ``model``, when given, must be the model family the study was tuned on.
    ``target_vocab`` is the target's vocabulary when its tokenizer is not the proxies'
    (:mod:`hptransfer.transfer.vocabulary` says what the measurement allows;
    ``vocab_mismatch`` whether an unsupported change is refused or predicted anyway);
    ``target_tokenizer_hash`` the target's ``tokenizer.json`` hash (``JsonTokenizer.file_hash``:
    another tokenizer than the proxies', even of their size, is such a change). Raises
    :class:`PredictionError` when the study cannot support a prediction.

    >>> import optuna
    >>> empty = optuna.storages.InMemoryStorage()
    >>> predict_hparams(1024, study="gone", storage=empty)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    hptransfer.errors.PredictionError: no study named 'gone' in this storage ...
    """
    from hptransfer.study.attributes import check_one_base, load_config
    from hptransfer.study.records import load_trials
    from hptransfer.study.storage import Access, missing_local_file, open_storage

    if storage is None or isinstance(storage, str):
        missing = missing_local_file(storage)
        if missing is not None:
            raise PredictionError(f"no study {study!r}: there is no storage file at "
                                  f"{missing}; create the study with hptransfer tune "
                                  f"--study {study} --widths 32,64")
        storage = open_storage(storage, Access.READ)
    try:
        config = load_config(study, storage)
        check_one_base(study, storage)
        records = load_trials(study, storage)
    except StudyError as error:
        raise PredictionError(str(error)) from None
    check_model(study, config, model)
    return predict_from_trials(records, config, target_width, study=study,
                               target_depth=target_depth, target_tokens=target_tokens,
                               target_batch=target_batch,
                               horizon_exponent=horizon_exponent, bootstrap=bootstrap,
                               seed=seed, target_vocab=target_vocab,
                               vocab_mismatch=vocab_mismatch,
                               target_tokenizer_hash=target_tokenizer_hash)
