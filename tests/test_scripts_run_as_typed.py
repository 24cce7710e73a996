"""The commands a user types work as typed: every entry-point script's --help, and the fast
commands of README.md, docs/*.md and bench/README.md, from the repository root with no PYTHONPATH.

In-process tests cannot see a missing sys.path set-up, because pytest.ini's `pythonpath = .`
puts the repository root on sys.path for them; `python extension/verify.py` in a user's shell
puts only extension/ there (issue 24). So these run each command in a subprocess, from the
repository root, with PYTHONPATH removed and HF_HUB_OFFLINE=1.

The README test copies the repository (without .git and what .gitignore names: runs/,
__pycache__/, exported/, ...) to a temporary folder beside a link to ../shared, and runs the
commands of the ```bash blocks of README.md, then docs/*.md (by name), then bench/README.md,
in that order there, so a command that reads an earlier one's output (runs/sft-demo, made by
the README's first run) finds it. Each command is either in FAST (run; exit 0 wanted) or matches
a prefix in SKIP (with the reason); any other command fails the test, so a new command in any
of those files forces a decision. The slow ones are in SKIP; FAST takes about 2 minutes on 2 CPU cores
(1 min 50 s on 2026-12-01), most of it the quickstart's training run that the others start from.
"""
from __future__ import annotations

import concurrent.futures
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Scripts a user runs; the discovered set must hold them all, so the test cannot shrink unseen.
ENTRY_POINTS = {"train.py", "infer.py", "evaluate.py", "win_rate.py", "upload_to_hub.py", "plots.py",
                "extension/verify.py", "extension/data_preparation.py", "bench/run.py", "bench/compile.py",
                "bench/verifier.py", "experiments/replicate.py", "experiments/probe_base.py", "embedded/build.py",
                "experiments/bt_anchor.py", "experiments/genrm_real.py", "bench/trl_losses.py", "bench/lora_memory.py",
                "experiments/genrm_gsm8k.py", "experiments/preference_family.py",
                "experiments/bt_loop.py", "bench/profile_step.py", "bench/rollout_speed.py",
                "experiments/genrm_onpolicy.py"}
# Files with a __main__ block that are not commands.
NOT_COMMANDS = {"embedded/task.py": "a library module whose __main__ prints sample problems; it takes no flags"}

# Documented commands that run, as written (after joining continuation lines and dropping comments).
FAST = {
    "python train.py --lr 1e-3 --max-epochs 2 --name sft-demo",
    "python upload_to_hub.py --checkpoint-path runs/sft-demo --output-dir exported/sft-demo",
    "python infer.py --model runs/sft-demo --limit 64 --output replies.jsonl",
    "python infer.py --model runs/sft-demo --limit 4 --preset beam --output beams.jsonl",
    "python extension/data_preparation.py --path ../shared/data/genrm-critiques/critiques --output-dir data/genrm",
}
# Command prefix -> why the test does not run it.
SLOW = "more than a minute on 2 CPU cores"
SKIP = {
    "pip install": "installs packages; the test runs in the installed environment",
    "python -m pip install": "installs packages; the test runs in the installed environment",
    "python -m pytest": "the whole test suite, this test included",
    "python train.py --model-name Qwen/Qwen2.5-0.5B": "a Hub download and --use-gpu",
    "python bench/run.py": f"a benchmark: {SLOW} (bench/README.md)",
    "python bench/verifier.py": f"a benchmark: 100 solutions with adaptive K, {SLOW}",
    "python bench/trl_losses.py": "needs TRL (bench/requirements.txt, not the trainer's); "
                                  "tests/test_loss_preference.py runs the same comparison where it is installed",
    "python bench/profile_step.py": f"a benchmark: SmolLM2 training steps under torch.profiler, {SLOW}",
    "python bench/rollout_speed.py": f"a benchmark: SmolLM2 rollouts sampled five ways, {SLOW} "
                                     f"(tests/test_bench_run.py runs it on a tiny model)",
    "python bench/compile.py": f"a benchmark: compiles the training step of two models, {SLOW} (bench/README.md)",
    "python bench/lora_memory.py": f"a benchmark: DPO steps on the real model in four processes, {SLOW} "
                                   f"(tests/test_bench_lora.py runs it on the bundled model)",
    "MALLOC_MMAP_THRESHOLD_=65536 python bench/lora_memory.py": f"the same benchmark, {SLOW}",
    "python train.py --training-type dpo --model-name runs/sft-demo": f"DPO with a win rate at each validation, {SLOW}",
    "python train.py --training-type dpo --model-name runs/sft-demo --dpo-loss": f"DPO training, {SLOW} "
                                                                                 f"(tests/test_loss_preference.py "
                                                                                 f"runs two steps of each loss)",
    "python train.py --training-type bt": f"reward-model training, {SLOW}",
    "python train.py --training-type orpo --model-name runs/sft-demo": f"ORPO training, {SLOW} "
                                                                       f"(tests/test_orpo_kto.py runs two steps)",
    "python train.py --training-type kto --model-name runs/sft-demo": f"KTO training, {SLOW} "
                                                                      f"(tests/test_orpo_kto.py runs two steps)",
    "python train.py --length-penalty": f"SFT that samples a reply for each row every --length-penalty-every steps, "
                                        f"{SLOW}",
    "python upload_to_hub.py --checkpoint-path runs/rm-demo": "needs runs/rm-demo (bt training, skipped)",
    "python upload_to_hub.py --checkpoint-path runs/dpo-lora": "needs runs/dpo-lora (DPO training, skipped); "
                                                             "tests/test_lora.py exports LoRA runs both ways",
    "python train.py --training-type grpo": f"GRPO rollouts, {SLOW}",
    "python win_rate.py --model runs/dpo-demo": "needs runs/dpo-demo (DPO training, skipped)",
    "python win_rate.py --model you/qwen-dpo": "Hub models and data, and an endpoint judge with $NVIDIA_API_KEY",
    "python train.py --training-type sft_verifier --model-name runs/": f"GenRM training, {SLOW}",
    "python train.py --training-type sft_verifier --dataset-name data/genrm --model-name ...":
        "`...` stands for a model the reader picks",
    "python extension/verify.py": "reads the reader's own pairs.jsonl / cands.jsonl (and runs/genrm-demo, skipped)",
    "python experiments/replicate.py": f"the whole SFT -> DPO -> GenRM pipeline, {SLOW}",
    "python experiments/bt_anchor.py": f"MiniLM bt training once a seed on the whole hh-rlhf slice, {SLOW}",
    "python experiments/bt_loop.py": f"the plain BT loop on MiniLM once a seed, {SLOW} (tests/test_bt_anchor.py "
                                     f"runs --small)",
    "python experiments/genrm_real.py": f"four SmolLM2 verifiers and their sampled rationales, {SLOW} "
                                        f"(tests/test_genrm_real.py runs --small)",
    "python experiments/genrm_onpolicy.py": f"a SmolLM2 verifier trained on its policy's samples, {SLOW} "
                                            f"(its --small takes 6 min; tests/test_genrm_real.py checks its rows)",
    "python experiments/genrm_gsm8k.py": f"SmolLM2 verifiers on GSM8K and their rationales, {SLOW} "
                                         f"(tests/test_genrm_gsm8k.py runs --small)",
    "python experiments/preference_family.py": f"three LoRA runs on SmolLM2 and their held-out scoring, {SLOW} "
                                               f"(tests/test_preference_family.py runs --small)",
    "python evaluate.py --models embedded/model runs/sft-demo runs/genrm-demo":
        "needs runs/genrm-demo (GenRM training, skipped)",
    "python plots.py --run runs/genrm-demo": "needs runs/genrm-demo (GenRM training, skipped)",
    "python train.py --model-name smollm2-135m-instruct": f"the real model: {SLOW} (tests/test_real_model.py "
                                                          f"runs each stage on it, shorter)",
    "python infer.py --model runs/sft-smollm": "needs runs/sft-smollm (real-model SFT, skipped)",
    "python train.py --training-type dpo --model-name runs/sft-smollm": "needs runs/sft-smollm (real-model SFT, skipped)",
    "HF_TOKEN=": "uploads to the Hub with the reader's token",
    "python train.py --use-ray": f"starts a local Ray cluster, {SLOW}",
    "ray job submit": "a Ray cluster (hippo/README.md) and --use-gpu",
    "tensorboard --logdir s3://": "a server that keeps running, on the reader's bucket",
}


def user_env() -> dict:
    """The environment of a user's shell: no PYTHONPATH (pytest.ini's pythonpath does not
    reach subprocesses anyway, but a developer's shell may have one), offline Hub."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def discover_entry_points() -> set[str]:
    """Every .py with an `if __name__ == "__main__":` block at the top level or in a subfolder
    (tests/ aside), as a path relative to the repository root."""
    found = set()
    for path in REPO.rglob("*.py"):
        rel = path.relative_to(REPO)
        if rel.parts[0] in ("tests", ".git") or any(p.startswith(".") or p == "__pycache__" for p in rel.parts):
            continue
        if re.search(r'^if __name__ == "__main__":', path.read_text(encoding="utf-8"), re.MULTILINE):
            found.add(rel.as_posix())
    return found - set(NOT_COMMANDS)


def run(command: list[str] | str, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    shell = isinstance(command, str)
    return subprocess.run(["bash", "-c", command] if shell else command, cwd=cwd, env=user_env(),
                          capture_output=True, text=True, timeout=timeout)


def test_every_entry_point_answers_help_from_the_repository_root():
    scripts = discover_entry_points()
    assert ENTRY_POINTS <= scripts, f"entry points not found: {sorted(ENTRY_POINTS - scripts)}"
    commands = [[sys.executable, script, "--help"] for script in sorted(scripts)]
    commands.append([sys.executable, "-m", "extension.verify", "--help"])     # the module form still works
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        done = list(pool.map(lambda c: run(c, REPO, 120), commands))
    failed = [f"{shlex.join(c[1:])}: exit {p.returncode}\n{p.stderr[-1500:]}" for c, p in zip(commands, done)
              if p.returncode != 0 or "usage" not in p.stdout.lower()]
    assert not failed, "\n\n".join(failed)


def strip_comment(line: str) -> str:
    """The line without a shell comment: a # at its start or after a blank, outside quotes."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def shell_commands(markdown: str) -> list[str]:
    """The commands of a Markdown text's ```bash blocks in order: continuation lines joined,
    comments dropped, `a && b` split in two (a skipped `pip install` in front of a command
    that runs), blanks collapsed."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", markdown, re.DOTALL | re.MULTILINE):
        logical = re.sub(r"\\\n", " ", block)
        for line in logical.splitlines():
            line = " ".join(strip_comment(line).split())
            commands += [part.strip() for part in line.split(" && ") if part.strip()]
    return commands


def documented_commands() -> list[tuple[str, str]]:
    """(file, command) for README.md, every docs/*.md and bench/README.md, in that order."""
    files = [REPO / "README.md"] + sorted((REPO / "docs").glob("*.md")) + [REPO / "bench" / "README.md"]
    return [(f.relative_to(REPO).as_posix(), c) for f in files for c in shell_commands(f.read_text(encoding="utf-8"))]


def skip_reason(command: str) -> str | None:
    matches = [prefix for prefix in SKIP if command.startswith(prefix)]
    return SKIP[max(matches, key=len)] if matches else None


def test_shell_commands_are_parsed_as_a_reader_types_them():
    text = ("```bash\n# a comment\npip install -r r.txt && python a.py --x 1   # trailing\n"
            "python b.py --y \"#not a comment\" \\\n    --z 2\n```\n```python\nprint('not bash')\n```\n")
    assert shell_commands(text) == ["pip install -r r.txt", "python a.py --x 1",
                                    "python b.py --y \"#not a comment\" --z 2"]
    assert skip_reason("HF_TOKEN=... python upload_to_hub.py") == SKIP["HF_TOKEN="]
    # The longest prefix decides: a more specific entry may say more than a general one.
    assert skip_reason("python -m pip install -r requirements.txt") == SKIP["python -m pip install"]


def test_readme_commands_run_as_written(tmp_path):
    found = documented_commands()
    assert found, "no ```bash commands in README.md"
    undecided = [f"{where}: {c}" for where, c in found if c not in FAST and skip_reason(c) is None]
    assert not undecided, ("commands neither in FAST (run by this test) nor in SKIP (with a reason); add each "
                           "to one of them:\n" + "\n".join(undecided))
    both = [c for _, c in found if c in FAST and skip_reason(c) is not None]
    assert not both, f"in FAST and matched by SKIP: {both}"
    unused = sorted(FAST - {c for _, c in found})
    assert not unused, f"in FAST but in no ```bash block of the documents: {unused}"
    # A fresh clone: no .git, nothing .gitignore names; ../shared beside it as beside the checkout.
    ignored = [line.strip().rstrip("/") for line in (REPO / ".gitignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    copy = tmp_path / "repo"
    shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns(".git", *ignored), symlinks=True)
    if (REPO.parent / "shared").exists():
        (tmp_path / "shared").symlink_to(REPO.parent / "shared")
    ran, seen = [], set()
    for where, command in found:
        # The README repeats a command where a later section starts from its output (the
        # pipeline block's "1. train (the first command above)"): it is run once.
        if command not in FAST or command in seen:
            continue
        if "../shared/" in command and not (REPO.parent / "shared").exists():
            continue        # a checkout without the shared data beside it (the tests that need it skip too)
        seen.add(command)
        start = time.perf_counter()
        done = run(command, copy, 600)
        ran.append(f"{time.perf_counter() - start:6.1f} s  {command}")
        assert done.returncode == 0, (f"{where}: `{command}` exited {done.returncode} in {copy}\n"
                                      f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    print("\n".join(ran))
    assert (copy / "runs" / "sft-demo").is_dir() and (copy / "exported" / "sft-demo" / "config.json").is_file()
    assert len((copy / "replies.jsonl").read_text().splitlines()) == 64
