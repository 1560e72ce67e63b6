"""``hptransfer predict``: the hparams for a width too large to tune, from a study's proxies."""

from __future__ import annotations

import math
from pathlib import Path

import click

from hptransfer.cli.app import main
from hptransfer.cli.options import NUMBER, check_out, fail, model_option, storage_option
from hptransfer.study.optimum import BOOTSTRAP
from hptransfer.transfer.vocabulary import VocabularyMismatch


def _power(value: float) -> str:
    return f"2^{math.log2(value):.2f}" if value > 0 else "0"


def _value(name: str, value: float) -> str:
    if name == "batch_size":
        return f"{value:g}"
    if name == "lr":
        return f"{value:.4g} ({_power(value)})"
    return f"{value:.3g}"


def print_prediction(prediction, *, baselines: bool = False) -> None:
    """The human-readable prediction (``hptransfer predict`` and ``quickstart``)."""
    p, h = prediction, prediction.hparams
    echo = click.echo
    echo(f"study {p.study} → width {p.target_width} (depth {p.target_depth}, "
         f"{p.target_tokens:,} training tokens, batch {h.batch_size} × {p.spec.seq_len})")
    echo("")
    for name in ("lr", "weight_decay", "batch_size"):
        value = getattr(h, name)
        interval = p.intervals.get(name)
        shown = (f"95% interval {_value(name, interval[0])} … {_value(name, interval[1])}"
                 if interval else "(not tuned: the study's value)"
                 if name not in p.evidence.searched else "(set by --target-batch)")
        echo(f"  {name:<13} {_value(name, value):<22} {shown}")
    tuned = any(rule.name == "multipliers" for rule in p.rules)
    echo(f"  {'multipliers':<13} {h.multipliers_text():<22} "
         + ("(tuned on the narrowest proxy, held at every width)" if tuned
            else "(not tuned: the study's values)"))
    echo(f"  {'':<13} hidden matrices at the target: {p.hidden_lr()}; weight decay rule "
         f"{h.weight_decay_rule.value}")
    if p.regret is not None:
        from hptransfer.transfer.regret import describe

        echo(f"  {'':<13} {describe(p.regret)}")
    if p.evidence.seed_noise is not None:
        noise = p.evidence.seed_noise
        echo(f"  {'':<13} seed noise {100 * noise.shape:.2f}% of a run's loss ({noise.points} "
             f"LRs with two seeds), included in every LR interval")
    echo("")
    echo("evidence (per proxy width):")
    echo(f"  {'width':>6} {'complete':>8} {'diverged':>8} {'best loss':>10} "
         f"{'lr optimum':>11} {'95% interval':>22}  method")
    for e in p.evidence.widths:
        lr = e.optima["lr"]
        echo(f"  {e.width:>6} {e.complete:>8} {e.diverged:>8} {e.best_loss:>10.4f} "
             f"{_power(lr.value):>11} {_power(lr.interval[0]) + ' … ' + _power(lr.interval[1]):>22}"
             f"  {lr.method}"
             + (f"; diverged from {_power(e.diverged_lr)}" if e.diverged_lr else ""))
    for fit in p.evidence.fits.values():
        loo = ", ".join(f"w{w} {err:+.2f}" for w, err in fit.leave_one_out.items())
        echo(f"  fit {fit.hparam}: slope {fit.slope:+.2f} octave per doubling "
             f"[{fit.slope_interval[0]:+.2f}, {fit.slope_interval[1]:+.2f}] → "
             f"{fit.model.value}; leave-one-width-out errors (octaves): {loo}")
    echo("")
    echo("rules applied:")
    for rule in p.rules:
        echo(f"  - {rule.name}: {rule.detail}")
    if baselines:
        echo("")
        echo("baselines (Step Law and DeepSeek are SP fits: absolute per-step LR, batch in "
             "tokens; compare their LR with the hidden-matrix LR above, not with α):")
        for name, b in p.baselines.items():
            batch = f"batch {b.batch_size}" if b.batch_size is not None else ""
            if b.batch_tokens is not None:
                batch += f" ({b.batch_tokens:,.0f} tokens)"
            wd = f", weight decay {b.weight_decay:.3g}" if b.weight_decay is not None else ""
            echo(f"  {name:<10} lr {_value('lr', b.lr)}, {batch}{wd}")
            echo(f"  {'':<10} {b.note}")
    if p.warnings:
        echo("")
        echo(click.style(f"WARNINGS ({len(p.warnings)}):", fg="red", bold=True))
        for warning in p.warnings:
            echo(click.style(f"  ! {warning}", fg="yellow"))


@main.command()
@click.option("--target-width", type=click.IntRange(min=1), required=True,
              help="width (d_model) of the model to predict hparams for")
@click.option("--study", "study_name", default="proxy", show_default=True,
              help="the tuned study to predict from")
@storage_option()
@click.option("--target-depth", type=click.IntRange(min=1), default=None,
              help="depth of the target [default: the proxies' depth]")
@click.option("--target-tokens", type=NUMBER, default=None,
              help="training tokens of the target, e.g. 2e9 [default: the proxies' budget]")
@click.option("--target-batch", type=click.IntRange(min=1), default=None,
              help="target batch in sequences [default: the proxies' optimum]")
@click.option("--horizon-exponent", type=float, default=None,
              help="β of the horizon rule η* ∝ D^−β for --target-tokens [default: 0.3, a "
                   "literature value]; a steps study measures it (docs/reproduction.md)")
@click.option("--baseline", is_flag=True,
              help="also show zero-shot µTransfer, Step Law and DeepSeek predictions")
@click.option("--bootstrap", type=click.IntRange(min=50), default=BOOTSTRAP, show_default=True,
              help="bootstrap resamples for the intervals")
@click.option("--seed", type=int, default=0, show_default=True, help="bootstrap seed")
@click.option("--json", "as_json", is_flag=True, help="print the prediction as JSON")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="also write the prediction as JSON to this file")
@click.option("--snippet", type=click.Choice(["torch", "hf"]), default=None,
              help="print ready code instead: the target model with its µP optimizer and "
                   "schedule for a PyTorch loop, or for a Hugging Face Trainer")
@click.option("--target-vocab", type=click.IntRange(min=2), default=None,
              help="the target's vocabulary when its tokenizer is not the proxies' "
                   "[default: the proxies']")
@click.option("--target-tokenizer", type=click.Path(dir_okay=False), default=None,
              help="the target's tokenizer.json (a local file): its vocabulary, as "
                   "--target-vocab; another tokenizer than the proxies' is judged even at "
                   "their vocabulary size")
@click.option("--vocab-mismatch", type=click.Choice([v.value for v in VocabularyMismatch]),
              default=VocabularyMismatch.REFUSE.value, show_default=True,
              help="a target vocabulary no measurement supports: refuse (with the fix), or "
                   "predict anyway with a warning (docs/transfer.md)")
@model_option
def predict(target_width, study_name, storage, target_depth, target_tokens, target_batch,
            horizon_exponent, baseline, bootstrap, seed, as_json, out, snippet, target_vocab,
            target_tokenizer, vocab_mismatch, model) -> None:
    """Predict lr, weight decay and batch size at --target-width from a tuned study.

    Fits each proxy width's optimum (quadratic in log2 lr, bootstrap intervals), fits the
    optimum against width, and applies named rules for batch, horizon, weight decay and
    depth. Warns loudly when transfer is not holding (the optimum drifts with width).
    """
    from hptransfer.report.files import write_atomic
    from hptransfer.transfer import predict_hparams

    if as_json and snippet:
        fail("--json and --snippet both print to stdout: give one of them")
    tokens = None
    if target_tokens is not None:
        if target_tokens < 1 or target_tokens != math.floor(target_tokens):
            fail(f"--target-tokens must be a positive whole number, got {target_tokens:g}")
        tokens = int(target_tokens)
    check_out(out, folder=False)
    tokenizer_hash = None
    if target_tokenizer is not None:
        from hptransfer.data.tokenizer import JsonTokenizer

        loaded = JsonTokenizer(target_tokenizer)  # a bad file: CorpusError, exit 2
        vocab, tokenizer_hash = loaded.vocab_size, loaded.file_hash
        if target_vocab is not None and target_vocab != vocab:
            fail(f"--target-vocab {target_vocab} and --target-tokenizer {target_tokenizer} "
                 f"(vocabulary {vocab}) disagree: give one of them")
        target_vocab = vocab
    prediction = predict_hparams(target_width, study=study_name, storage=storage,
                                 target_depth=target_depth, target_tokens=tokens,
                                 target_batch=target_batch, horizon_exponent=horizon_exponent,
                                 bootstrap=bootstrap, seed=seed, model=model,
                                 target_vocab=target_vocab,
                                 vocab_mismatch=VocabularyMismatch(vocab_mismatch),
                                 target_tokenizer_hash=tokenizer_hash)
    if snippet == "hf" and not prediction.spec.model.startswith("hf-"):
        fail(f"--snippet hf builds a Hugging Face Trainer, and study {study_name!r} tuned the "
             f"{prediction.spec.model} model: use --snippet torch, or tune --model hf-llama")
    text = prediction.model_dump_json(indent=2)
    if out is not None:
        write_atomic(Path(out), text + "\n")
    if as_json:
        click.echo(text)
    elif snippet == "torch":
        click.echo(prediction.torch_snippet())
    elif snippet == "hf":
        click.echo(prediction.hf_snippet())
    else:
        print_prediction(prediction, baselines=baseline)
        if out is not None:
            click.echo(f"\nprediction written to {out}")



