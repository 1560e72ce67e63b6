"""Per-rank parameter memory of a model built straight into its FSDP2 shards.

Starts N gloo ranks on the CPU (torch.multiprocessing), builds the built-in model from the
meta device on each (:func:`hptransfer.training.shards.build_sharded`) and prints, per rank:
the parameter bytes it holds (its padded shards: exact), the growth of its resident set's
high-water mark during the build (the shards plus the one whole tensor drawn at a time for
the init, plus allocator slack: an upper bound), and whether that fits ``--budget-mb``,
next to the whole model's bytes. Byte counts, not timings. Usage::

    python benchmarks/shard_memory.py --ranks 2,4 --width 768 --depth 8 --vocab 32768 \\
        --budget-mb 350
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile


def _peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _rank(rank: int, ranks: int, rendezvous: str, spec_json: str, out: str) -> None:
    import torch
    import torch.distributed as dist

    from hptransfer.hparams import HParams
    from hptransfer.models.registry import role_table
    from hptransfer.spec import ModelSpec
    from hptransfer.training.shards import build_sharded, local_bytes

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=ranks)
    try:
        spec = ModelSpec.model_validate_json(spec_json)
        role_table(spec)  # (cached: the shapes, from three models on the meta device)
        before = _peak_bytes()
        model = build_sharded(spec, HParams(), seed=0, device=torch.device("cpu"))
        result = {"rank": rank, "parameter_bytes": local_bytes(model),
                  "peak_rss_growth_bytes": _peak_bytes() - before}
        with open(os.path.join(out, f"rank{rank}.json"), "w") as handle:
            json.dump(result, handle)
    finally:
        dist.barrier()
        dist.destroy_process_group()


def measure(spec, ranks: int) -> list[dict]:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as folder:
        rendezvous = f"file://{os.path.join(folder, 'rendezvous')}"
        mp.spawn(_rank, args=(ranks, rendezvous, spec.model_dump_json(), folder),
                 nprocs=ranks, join=True)
        return [json.load(open(os.path.join(folder, f"rank{r}.json"))) for r in range(ranks)]


def main() -> None:
    from hptransfer.spec import ModelSpec

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ranks", default="2,4", help="comma-separated numbers of ranks")
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--budget-mb", type=float, default=350.0,
                        help="per-rank parameter budget the whole model exceeds")
    args = parser.parse_args()
    spec = ModelSpec(width=args.width, depth=args.depth, vocab=args.vocab, head_dim=64,
                     seq_len=64)
    whole = 4 * spec.parameter_count(embedding=True)
    budget = int(args.budget_mb * 2**20)
    report = {"spec": {"width": spec.width, "depth": spec.depth, "vocab": spec.vocab},
              "whole_parameter_bytes": whole, "budget_bytes": budget,
              "whole_fits_budget": whole <= budget, "runs": []}
    for ranks in (int(n) for n in args.ranks.split(",")):
        per_rank = measure(spec, ranks)
        # the high-water mark, not only the shards, must fit: the build's true peak
        report["runs"].append({"ranks": ranks, "per_rank": per_rank, "fits_budget": all(
            r["peak_rss_growth_bytes"] <= budget for r in per_rank)})
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
