"""`make bench`: every benchmark side by side in one run, results in benchmarks/out/bench.json and bench.md.

    .venv/bin/python benchmarks/run_all.py [--quick] [--compile]
                                           [--only step,data,train,memory,lrn,prepare,jpeg,precision,profile]

Each benchmark runs in its own process (so peak memory figures are its own) and writes its table; this
script collects them with the machine, torch version, date and command, and prints how long each took.
With a CUDA GPU visible the step, data and train benchmarks run on it (bf16 autocast, channels_last,
torch.compile, the store resident in GPU memory, batch 128 and a large batch), and the CPU-only ones as
usual. --quick: fewer repeats and smaller inputs, a smoke test whose figures are not for quoting. A full
run takes 6.5 to 7.5 minutes on a quiet 2-core CPU, 7.5 to 9 with the set-up of a fresh clone
(docs/PERFORMANCE.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import OUT, machine, write_json

HERE = Path(__file__).resolve().parent
TITLES = {
    "step": "Training step, synthetic input: each preset against the plain way and torchvision",
    "step-large": "Training step at a large batch (GPU)",
    "data": "Data path alone: store + loader + augmentation against ImageFolder + DataLoader",
    "train": "Training from real stores: step rate with real input, peak memory; the cifar epoch end to end",
    "memory": "Loader memory against store size",
    "lrn": "Local response normalization alone (benchmarks/bench_lrn.py)",
    "prepare": "Preparing a store (benchmarks/bench_prepare.py)",
    "profile": "Where the paper step's time goes against torchvision's alexnet (benchmarks/profile_step.py)",
    "jpeg": "JPEG stores: size, CPU decode + augmentation per core, cost against length (benchmarks/bench_jpeg.py)",
    "precision": "Precision and layout per CPU kind: each preset's step in fp32 and bf16, NCHW and channels_last",
}


def commands(quick: bool, cuda: bool, compile_too: bool) -> dict[str, list[str]]:
    q = ["--quick"] if quick else []
    device = ["--device", "cuda" if cuda else "cpu"]
    step = ["--repeats", "1", "--small-repeats", "3"] if quick else []
    if compile_too or cuda:
        step.append("--compile")
    out = {
        "step": ["bench_step.py", *device, *step, "--json", str(OUT / "step.json")],
        "data": ["bench_data.py", *device, *q, "--json", str(OUT / "data.json")],
        "train": ["bench_train.py", *device, *q, "--json", str(OUT / "train.json")],
        "memory": ["bench_memory.py", *q, "--json", str(OUT / "memory.json")],
        "lrn": ["bench_lrn.py", *(q or ["--repeats", "3"])],
        "prepare": ["bench_prepare.py", *(["--copies", "1", "--repeats", "1"] if quick else ["--repeats", "3"])],
        "precision": ["bench_precision.py", "--presets", "cifar,paper", *(["--repeats", "1"] if quick else []),
                      "--json", str(OUT / "precision.json")],
        "jpeg": ["bench_jpeg.py", *(["--batches", "3", "--repeats", "1"] if quick else []),
                 "--json", str(OUT / "jpeg.json")],
    }
    if not cuda:  # the profile reads CPU time; on a GPU the step's time is the device's
        out["profile"] = ["profile_step.py", *(["--batch", "32", "--steps", "1"] if quick else []),
                          "--json", str(OUT / "profile.json")]
    if cuda:
        out["step-large"] = ["bench_step.py", *device, "--batch", "1024", "--presets", "paper,one-tower", *step,
                             "--json", str(OUT / "step-large.json")]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smoke test: fewer repeats, smaller inputs")
    ap.add_argument("--only", help="comma-separated subset of: " + ", ".join(TITLES))
    ap.add_argument("--compile", action="store_true", help="also time torch.compile on the CPU (adds minutes)")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    todo = commands(args.quick, cuda, args.compile)
    if args.only:
        unknown = set(args.only.split(",")) - set(todo)
        if unknown:
            print(f"run_all: unknown benchmark(s) {', '.join(sorted(unknown))}; choose from {', '.join(todo)}",
                  file=sys.stderr)
            return 2
        todo = {k: v for k, v in todo.items() if k in args.only.split(",")}
    OUT.mkdir(parents=True, exist_ok=True)
    # the `alexnet` command's own default (src/alexnet/cli.py), for every side of every comparison alike
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    started = time.perf_counter()
    info = machine()
    info["omp_wait_policy"] = env["OMP_WAIT_POLICY"]
    info["load_average_start"] = round(os.getloadavg()[0], 2)
    command = " ".join([Path(sys.executable).name, "benchmarks/run_all.py", *sys.argv[1:]])
    print(f"{info['cpu']}: {info['cpu_kind']}; train.precision=auto picks {info['auto_precision']}, "
          f"train.channels_last=auto picks {info['auto_channels_last']} on this CPU", flush=True)
    sections, failures = {}, []
    for name, cmd in todo.items():
        print(f"\n=== {name}: {' '.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, str(HERE / cmd[0]), *cmd[1:]], capture_output=True, text=True,
                              cwd=HERE.parent, env=env)
        seconds = time.perf_counter() - t0
        print(proc.stdout, end="", flush=True)
        entry = {"command": " ".join(["benchmarks/" + cmd[0], *cmd[1:]]), "seconds": seconds,
                 "returncode": proc.returncode}
        json_path = Path(cmd[cmd.index("--json") + 1]) if "--json" in cmd else None
        if proc.returncode:
            failures.append(name)
            entry["error"] = proc.stderr[-2000:]
            print(proc.stderr[-2000:], file=sys.stderr)
        elif json_path is not None and json_path.exists():
            data = json.loads(json_path.read_text())
            # a script whose JSON holds no table printed its tables: keep what it printed
            entry["table"] = data.pop("table", "") or proc.stdout.strip()
            entry["results"] = data
        else:  # the scripts that print a markdown table and notes: keep their output as it is
            entry["table"] = proc.stdout.strip()
        sections[name] = entry
        print(f"--- {name}: {seconds:.0f} s", flush=True)
    total = time.perf_counter() - started
    info["load_average_end"] = round(os.getloadavg()[0], 2)
    report = {"machine": info, "command": command, "quick": args.quick, "total_seconds": total,
              "sections": sections}
    write_json(OUT / "bench.json", report)
    (OUT / "bench.md").write_text(markdown(report))
    print(f"\nall done in {total:.0f} s; wrote {OUT / 'bench.json'} and {OUT / 'bench.md'}"
          + (f"; FAILED: {', '.join(failures)}" if failures else ""))
    return 1 if failures else 0


def markdown(report: dict) -> str:
    m = report["machine"]
    hw = f"{m['cpu']} ({m['cpu_kind']}), {m['cores']} cores" + (f", {m['gpu']}" if m.get("gpu") else ", no GPU")
    lines = [f"# Benchmarks ({'quick smoke run, not for quoting' if report['quick'] else 'full run'})", "",
             f"- command: `{report['command']}`", f"- machine: {hw}",
             f"- on this CPU `auto` picks precision {m['auto_precision']}, channels_last {m['auto_channels_last']}",
             f"- torch {m['torch']}, Python {m['python']}, {m['threads']} torch threads, "
             f"OMP_WAIT_POLICY={m['omp_wait_policy']}", f"- date: {m['date']}",
             f"- load average (1 min) at start {m['load_average_start']}, at end {m['load_average_end']} "
             "(other work on the machine; variants are interleaved, ratios are what counts)",
             f"- total time: {report['total_seconds']:.0f} s", ""]
    for name, s in report["sections"].items():
        lines += [f"## {TITLES.get(name, name)}", "", f"`{s['command']}` ({s['seconds']:.0f} s)", ""]
        lines += [f"FAILED (exit {s['returncode']}):", "", "```", s.get("error", ""), "```"] if s["returncode"] \
            else [s.get("table", ""), ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
