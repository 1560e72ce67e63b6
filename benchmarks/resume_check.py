"""Kill a confirmation run mid-run, run it again, and compare it with one never interrupted.

A step of ``benchmarks/gpu_check.sh`` (the same check as tests/test_cluster_confirm.py, on
whatever device the confirm arguments name). Given two copies of one tuned study, it runs
``hptransfer confirm ... --offsets 0,1 --checkpoint-every N`` on the first, SIGKILLs it as
soon as its first checkpoint exists, runs the same command again (which resumes the run), then runs
the confirm without a kill on the second copy, and compares each offset's validation
curves point by point. Prints one JSON line; exits 1 when the rerun did not resume or the
curves differ by more than ``--tolerance`` (relative; 0 on the CPU, where a resumed run
is bit for bit the uninterrupted one). Usage::

    python benchmarks/resume_check.py --study gpu --target-width 1024 --killed a.db \\
        --whole b.db --checkpoint-dir ckpt --every 50 -- --device cuda --precision bf16
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path


def _confirm(args: argparse.Namespace, storage: str, checkpoints: Path) -> list[str]:
    return [sys.executable, "-m", "hptransfer.cli", "confirm", "--study", args.study,
            "--target-width", str(args.target_width), "--storage", storage, "--offsets", "0,1",
            "--checkpoint-every", str(args.every), "--checkpoint-dir", str(checkpoints),
            "--json", *args.confirm]


def _runs(storage: str, study: str, width: int) -> dict[float, dict]:
    """Each completed run's validation curve and the steps it resumed at, by offset."""
    import optuna

    from hptransfer.study.names import confirmation_study_name
    from hptransfer.study.schema import Attr, TrialStatus

    runs = optuna.load_study(study_name=confirmation_study_name(study, width), storage=storage)
    done = [t for t in runs.get_trials(deepcopy=False)
            if t.user_attrs.get(Attr.STATUS) == TrialStatus.COMPLETE.value]
    if len(done) != 2:
        raise SystemExit(f"resume_check: {len(done)} completed runs in {storage}, not 2")
    return {t.user_attrs[Attr.OFFSET]: {
        "curve": [p["loss"] for p in json.loads(t.user_attrs[Attr.VAL_CURVE])],
        "resumed_at": json.loads(t.user_attrs.get(Attr.RESUMED_AT, "[]"))} for t in done}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--study", required=True)
    parser.add_argument("--target-width", type=int, required=True)
    parser.add_argument("--killed", required=True, help="storage of the run to kill")
    parser.add_argument("--whole", required=True, help="storage of the uninterrupted run")
    parser.add_argument("--checkpoint-dir", type=Path, required=True)
    parser.add_argument("--every", type=int, default=20, help="checkpoint every N steps")
    parser.add_argument("--tolerance", type=float, default=0.0)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("confirm", nargs="*", help="more confirm arguments (after --)")
    args = parser.parse_args()

    killed_dir = args.checkpoint_dir / "killed"
    child = subprocess.Popen(_confirm(args, args.killed, killed_dir),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + args.timeout
    # a complete checkpoint is a renamed step-NNNNNNNN folder (half-written ones are not)
    while not list(killed_dir.glob("*/step-????????")):
        if child.poll() is not None:
            raise SystemExit("resume_check: the confirm ended before its first checkpoint "
                             f"(make the study's runs longer): {child.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            child.kill()
            raise SystemExit(f"resume_check: no checkpoint within {args.timeout} s")
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)  # mid-run: no cleanup, as a preemption would leave it
    child.wait()
    for storage, folder in ((args.killed, killed_dir), (args.whole, args.checkpoint_dir / "w")):
        done = subprocess.run(_confirm(args, storage, folder), capture_output=True, text=True,
                              timeout=args.timeout)
        if done.returncode != 0:
            raise SystemExit(f"resume_check: confirm on {storage} failed: "
                             f"{done.stderr[-2000:]}")
    resumed = _runs(args.killed, args.study, args.target_width)
    whole = _runs(args.whole, args.study, args.target_width)
    if sorted(resumed) != sorted(whole):
        raise SystemExit(f"resume_check: offsets {sorted(resumed)} and {sorted(whole)}")
    worst = max(abs(a - b) / abs(b) for offset in whole
                for a, b in zip(resumed[offset]["curve"], whole[offset]["curve"], strict=True))
    at = [step for run in resumed.values() for step in run["resumed_at"]]
    # exactly one run was killed (the one training when the first checkpoint appeared)
    ok = len(at) == 1 and not any(run["resumed_at"] for run in whole.values()) \
        and worst <= args.tolerance
    print(json.dumps({"ok": ok, "resumed_at": at, "max_rel_diff": worst,
                      "points": sum(len(run["curve"]) for run in whole.values())}))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
