"""Running the train.py stages of an experiment: each stage is one command, printed before it
runs, and a stage whose run folder already holds a finished run of the same command is
reused, so an interrupted experiment continues where it stopped.

    seconds = run_stage("sft", ["--training-type", "sft", ..., "--storage-path", out], out)
    p = experiment_parser(__doc__)          # an experiment's command line, with --small
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import json
import time

import storage

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMAND_FILE = "stage_command.json"      # in each run folder: the train.py arguments it was trained with


def finished(run: str) -> bool:
    return storage.exists(storage.join(run, "checkpoints", "last.ckpt"))


def run_stage(name: str, args: list[str], out: str) -> float:
    """Run one train.py stage (reused when its run folder already holds a finished run of the
    same command); returns its wall time in seconds (0 when reused). The command is kept in the
    run folder, so a folder trained by another command (another critique style, lr, ...) under
    the same name is refused rather than passed off as this stage."""
    run = storage.join(out, name)
    recorded = storage.join(run, COMMAND_FILE)
    if finished(run):
        if storage.exists(recorded) and json.loads(storage.read_text(recorded)) != args:
            raise SystemExit(f"error: stage {name}: {run} holds a run of another command ({recorded}); "
                             f"remove the folder or choose another --out.")
        print(f"[{name}] reusing the finished run in {run}"
              f"{'' if storage.exists(recorded) else ' (its command was not recorded)'}", flush=True)
        return 0.0
    print(f"[{name}] python train.py {shlex.join(args)}", flush=True)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, os.path.join(REPO, "train.py"), *args], cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"error: stage {name} failed (exit {done.returncode}); its command is above.")
    storage.write_text_atomic(recorded, json.dumps(args) + "\n")
    return time.perf_counter() - start


def write_report(out: str, report: dict, table: str) -> None:
    """results.json (every number) and results.md (the tables) into `out`, each written whole;
    prints the table and where both went."""
    storage.write_text_atomic(storage.join(out, "results.json"), json.dumps(report, indent=1) + "\n")
    storage.write_text_atomic(storage.join(out, "results.md"), table)
    print(table)
    print(f"Report: {storage.join(out, 'results.md')} and results.json; figures in {storage.join(out, 'figures')}.")


def experiment_parser(doc: str, small_help: str = "every stage on a few rows and steps (what CI runs)"
                      ) -> argparse.ArgumentParser:
    """An experiment's command line: its docstring's first line as the description, defaults
    shown, and --small (its few-rows setting)."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--small", action="store_true", help=small_help)
    return p
