"""Coordinate check (SPEC §6): are activation sizes flat in width during training?

Each width trains a few steps on the same fixed batch sequence with a largish constant LR.
Before each optimizer step (t = 1 is the initial model) the mean |activation| of every
module type's output is recorded: token embedding, attention output, MLP output, block
output (the residual stream) and logits. Under µP these curves are flat in width at every t;
under SP they grow with width once the first update has happened.

Pass/fail, after microsoft/mup's numeric test: for every module type and step, fit
log2|activation| against log2(width); the growth per doubling of width, 2^slope, must lie
within [1/tolerance, tolerance]. Exceptions predicted by the theory: at t = 1 the logits of a
non-zero µP readout (init std 1/M) shrink like 1/√M, so logits at t = 1 are exempt, and at
later steps the logits are only required not to grow (their init part still shrinks like
1/√M while the Θ(1) learned part builds up). Hidden activations must be flat both ways.

>>> report = coord_check(widths=(32, 64), steps=2, depth=1, seq_len=16, batch_size=2)
>>> report.widths, len(report.points) > 0
((32, 64), True)
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from pydantic import Field
from torch import nn

from hptransfer.data.corpus import Corpus, load_corpus
from hptransfer.hparams import HParams
from hptransfer.models.transformer import (
    MLP,
    Attention,
    Block,
    Readout,
    TokenEmbedding,
    Transformer,
)
from hptransfer.spec import FrozenConfig, ModelSpec, Parametrization, ReadoutInit
from hptransfer.train.loop import _autocast, resolve_threads
from hptransfer.train.optimizer import build_optimizer

__all__ = ["CoordCheckReport", "CoordPoint", "coord_check", "write_report"]

# module type whose outputs are recorded -> name in the report
_MODULE_NAMES: dict[type[nn.Module], str] = {
    TokenEmbedding: "embedding",
    Attention: "attention",
    MLP: "mlp",
    Block: "block",
    Readout: "logits",
}

DEFAULT_TOLERANCE = 1.25


class CoordPoint(FrozenConfig):
    module: str
    step: int  # 1 = before the first update
    width: int
    mean_abs: float


class Growth(FrozenConfig):
    module: str
    step: int
    per_doubling: float  # 2^slope of log2|act| vs log2(width)
    exempt: bool
    ok: bool


class CoordCheckReport(FrozenConfig):
    param: Parametrization
    widths: tuple[int, ...]
    steps: int
    lr: float
    tolerance: float
    spec: ModelSpec = Field(description="spec of the first width (others differ in width)")
    points: tuple[CoordPoint, ...]
    growth: tuple[Growth, ...]
    passed: bool

    @property
    def failures(self) -> list[Growth]:
        return [g for g in self.growth if not g.ok]


def _record_width(spec: ModelSpec, hparams: HParams, batches: list[torch.Tensor], seed: int
                  ) -> dict[tuple[str, int], float]:
    model = Transformer(spec, seed=seed)
    optimizer = build_optimizer(model, spec, hparams)
    sums: dict[str, list[float]] = defaultdict(list)

    def hook(name: str):
        def record(_module, _inputs, output):
            sums[name].append(output.detach().abs().mean().item())
        return record

    handles = [module.register_forward_hook(hook(_MODULE_NAMES[type(module)]))
               for module in model.modules() if type(module) in _MODULE_NAMES]
    means: dict[tuple[str, int], float] = {}
    for t, batch in enumerate(batches, start=1):
        sums.clear()
        with _autocast(spec):
            logits = model(batch[:, :-1])
            loss = nn.functional.cross_entropy(logits.float().flatten(0, 1),
                                               batch[:, 1:].flatten())
        for name, values in sums.items():
            means[(name, t)] = float(np.mean(values))  # averaged over blocks
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    for handle in handles:
        handle.remove()
    return means


def coord_check(*, widths: tuple[int, ...] = (32, 64, 128, 256),
                param: Parametrization | str = Parametrization.MUP, steps: int = 4,
                lr: float = 2.0**-5, depth: int = 2, seq_len: int = 64, batch_size: int = 8,
                tolerance: float = DEFAULT_TOLERANCE, seed: int = 0,
                corpus: Corpus | None = None, threads: int | None = None,
                **spec_fields) -> CoordCheckReport:
    """Train each width ``steps`` steps and judge whether activations stay flat in width.

    ``spec_fields`` are further :class:`ModelSpec` fields (head_dim, activation, …). The LR
    is constant (no warmup or decay) so every step moves the weights.
    """
    if len(widths) < 2:
        raise ValueError(f"a coord check needs at least two widths, got {list(widths)}")
    torch.set_num_threads(resolve_threads(threads))
    corpus = corpus if corpus is not None else load_corpus()
    specs = [ModelSpec(width=w, depth=depth, seq_len=seq_len, param=param, **spec_fields)
             for w in widths]
    hparams = HParams(lr=lr, warmup_fraction=0.0, final_lr_fraction=1.0, grad_clip=0.0,
                      batch_size=batch_size)
    rng = np.random.default_rng(seed)
    batches = [torch.from_numpy(corpus.train_batch(rng, batch_size, seq_len))
               for _ in range(steps)]
    per_width = {spec.width: _record_width(spec, hparams, batches, seed) for spec in specs}

    points = [CoordPoint(module=name, step=t, width=w, mean_abs=value)
              for w, means in per_width.items() for (name, t), value in means.items()]
    exempt_logits = specs[0].readout_init is not ReadoutInit.ZERO and specs[0].param in (
        Parametrization.MUP, Parametrization.MUP_ABS)
    log_widths = np.log2(np.array(widths, dtype=float))
    growth = []
    for name, t in sorted(per_width[widths[0]]):
        values = np.array([per_width[w][(name, t)] for w in widths])
        slope = float(np.polyfit(log_widths, np.log2(np.maximum(values, 1e-30)), 1)[0])
        per_doubling = 2.0**slope
        exempt = exempt_logits and name == "logits" and t == 1
        # The network output keeps its 1/√M init part for a few steps after the first
        # (sign-like) Adam update, so early logits may shrink with width at small widths; a
        # parametrization error shows as growth. Hidden activations must be flat both ways.
        low = 0.0 if name == "logits" else 1.0 / tolerance
        ok = exempt or (low <= per_doubling <= tolerance and math.isfinite(per_doubling))
        growth.append(Growth(module=name, step=t, per_doubling=per_doubling, exempt=exempt,
                             ok=ok))
    return CoordCheckReport(param=specs[0].param, widths=tuple(widths), steps=steps, lr=lr,
                            tolerance=tolerance, spec=specs[0], points=tuple(points),
                            growth=tuple(growth), passed=all(g.ok for g in growth))


def write_report(report: CoordCheckReport, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``coord_check_<param>.json`` and ``.png`` into ``out_dir``; return both paths.

    Files are written to a temporary name and renamed, so a crash leaves no half a report.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"coord_check_{report.param.value}"
    json_path, png_path = out / f"{stem}.json", out / f"{stem}.png"

    modules = sorted({p.module for p in report.points})
    fig, axes = plt.subplots(1, report.steps, figsize=(3.2 * report.steps, 3.2),
                             sharey=True, squeeze=False)
    for t, ax in enumerate(axes[0], start=1):
        for name in modules:
            pts = sorted((p.width, p.mean_abs) for p in report.points
                         if p.module == name and p.step == t)
            ax.plot(*zip(*pts, strict=True), marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"t = {t}")
        ax.set_xlabel("width")
    axes[0][0].set_ylabel("mean |activation|")
    axes[0][-1].legend(fontsize=7)
    verdict = "PASS" if report.passed else "FAIL"
    fig.suptitle(f"coord check, {report.param.value}, lr {report.lr:g}: {verdict}")
    fig.tight_layout()
    tmp_png = png_path.with_suffix(".png.tmp")
    fig.savefig(tmp_png, format="png", dpi=100)
    plt.close(fig)

    tmp_json = json_path.with_suffix(".json.tmp")
    tmp_json.write_text(json.dumps(report.model_dump(mode="json"), indent=2))
    tmp_png.replace(png_path)
    tmp_json.replace(json_path)
    return json_path, png_path
