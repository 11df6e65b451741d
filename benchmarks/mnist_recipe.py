"""The best-accuracy MNIST recipe (benchmarks/mnist-recipe.yaml): its seeds and what each ingredient contributes.

    python benchmarks/mnist_recipe.py                          # the recipe with seeds 0 and 1, then the ablation
    python benchmarks/mnist_recipe.py --only recipe --seeds 0 1  # the timed runs alone (run them on quiet cores)
    python benchmarks/mnist_recipe.py --only ablation --jobs 2 --threads 1
    python benchmarks/mnist_recipe.py --recipe OTHER.yaml --only recipe   # another recipe file, same measurements

Each run is ``cnnctl train --config FILE`` in a fresh process, FILE being the recipe with one ingredient taken
out (the ablation) or the recipe as committed. Reported per run: the final test accuracy from results.json, the
wall time of the whole ``cnnctl train`` process (data load, training, the final test) and, for the recipe runs,
the test accuracy of ``cnnctl eval --tta crop`` on the same checkpoint. The ablation's accuracies do not depend
on the load, so ``--jobs 2 --threads 1`` runs two variants side by side; its times are then not comparable with
the quiet ones (the table says under which threads and jobs each ran). MNIST comes from ``$CNNCTL_MIRROR`` or
``../shared/datasets/mnist``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "benchmarks" / "mnist-recipe.yaml"

# variant name → (what it changes, the recipe's keys it overrides; None removes the key)
ABLATION: dict[str, tuple[str, dict[str, Any]]] = {
    "no-smoothing": ("without label smoothing", {"label_smoothing": None}),
    "no-augment": ("without augmentation", {"augment": "none"}),
    "shift-only": ("shift instead of affine", {"augment": "shift"}),
    "two-stages": ("two stages at width 32 (the previous network)", {"arch_args": {"width": 32}}),
}


def cnnctl(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cnnctl", *args], capture_output=True, text=True, env=env,
                          check=False)


def evaluate(checkpoint: Path, env: dict[str, str], *options: str) -> float:
    done = cnnctl("eval", str(checkpoint), "--json", *options, env=env)
    if done.returncode != 0:
        raise SystemExit(f"cnnctl eval {checkpoint} {' '.join(options)} failed:\n{done.stderr}")
    return float(json.loads(done.stdout)["accuracy"])


def raw_weights(run_dir: Path) -> Path:
    """RUN/raw.safetensors: last.safetensors with the weights before averaging (``model.*`` in the training
    state) in place of the average, with their own BatchNorm running statistics."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(run_dir / "last.safetensors"), "pt") as last:
        metadata, names = last.metadata(), list(last.keys())
    with safe_open(str(run_dir / "state.safetensors"), "pt") as state:
        tensors = {name: state.get_tensor(f"model.{name}").contiguous() for name in names}
    path = run_dir / "raw.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    return path


def run_variant(recipe: Path, name: str, overrides: dict[str, Any], seed: int, threads: int, out: Path, tta: bool,
                env: dict[str, str]) -> dict[str, Any]:
    config = yaml.safe_load(recipe.read_text())
    for key, value in overrides.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    config_path = out / f"{name}-seed{seed}.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    run_name = f"{name}-seed{seed}"
    started = time.perf_counter()
    done = cnnctl("train", "--config", str(config_path), "--seed", str(seed), "--threads", str(threads),
                  "--out", str(out), "--name", run_name, "--no-plots", env=env)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{run_name} failed:\n{done.stderr}")
    run_dir = out / run_name / "1"
    results = json.loads((run_dir / "results.json").read_text())
    row = {"variant": name, "seed": seed, "threads": threads, "test_acc": results["test_acc"], "wall_s": wall}
    if tta:
        row["tta_crop_acc"] = evaluate(run_dir / "best.safetensors", env, "--tta", "crop")
        row["raw_acc"] = evaluate(raw_weights(run_dir), env)
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=RECIPE, help="the recipe file [default: %(default)s]")
    parser.add_argument("--only", choices=("recipe", "ablation"), help="one part only")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds of the recipe runs")
    parser.add_argument("--variants", nargs="+", choices=sorted(ABLATION), default=list(ABLATION))
    parser.add_argument("--threads", type=int, default=2, help="--threads of each cnnctl train")
    parser.add_argument("--jobs", type=int, default=1, help="runs side by side (the ablation only)")
    parser.add_argument("--out", type=Path, help="keep the run folders here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    args = parser.parse_args()

    mirror = os.environ.get("CNNCTL_MIRROR") or str(REPO.parent / "shared" / "datasets" / "mnist")
    out = args.out or Path(tempfile.mkdtemp(prefix="mnist-recipe-"))
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "CNNCTL_MIRROR": mirror,
           "CNNCTL_DATA": os.environ.get("CNNCTL_DATA", str(out / "data"))}
    prepared = cnnctl("download", "mnist", env=env)
    if prepared.returncode != 0:
        raise SystemExit(f"cnnctl download mnist failed:\n{prepared.stderr}")

    rows: list[dict[str, Any]] = []
    if args.only in (None, "recipe"):
        for seed in args.seeds:  # one at a time: these are the timed runs
            rows.append(run_variant(args.recipe, "recipe", {}, seed, args.threads, out, True, env))
    if args.only in (None, "ablation"):
        with ThreadPoolExecutor(args.jobs) as pool:
            jobs = [pool.submit(run_variant, args.recipe, name, ABLATION[name][1], args.seeds[0], args.threads, out,
                                False, env) for name in args.variants]
            rows += [job.result() for job in jobs]
    load = os.getloadavg()[0]

    print("| run | seed | test accuracy | raw weights (no EMA) | with --tta crop | wall | threads × jobs |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for row in rows:
        what = "recipe" if row["variant"] == "recipe" else ABLATION[row["variant"]][0]
        jobs = 1 if row["variant"] == "recipe" else args.jobs
        tta = f"{row['tta_crop_acc']:.2%}" if "tta_crop_acc" in row else ""
        raw = f"{row['raw_acc']:.2%}" if "raw_acc" in row else ""
        minutes, seconds = divmod(round(row["wall_s"]), 60)
        print(f"| {what} | {row['seed']} | {row['test_acc']:.2%} | {raw} | {tta} | {minutes} min {seconds:02d} s "
              f"| {row['threads']} × {jobs} |")
    print(f"\nload average at the end: {load:.2f}; run folders in {out}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
