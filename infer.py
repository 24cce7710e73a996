"""Batch inference: generate replies to a data set's prompts with a checkpoint or a model, JSONL out.

    python infer.py --model runs/sft-demo --output replies.jsonl                       # bundled test prompts
    python infer.py --model runs/sft-demo --input prompts.jsonl --prompt-column question --preset submission
    python infer.py --model you/qwen-dpo --input HuggingFaceH4/ultrafeedback_binarized --split test_prefs \\
        --preset beam --backend vllm --output beams.jsonl

--input is a .jsonl/.json/.csv/.parquet file (optionally .gz), a folder of split files, a
save_to_disk folder or a Hub data set (default: the bundled SFT data, its test split).
--prompt-column names the column (default: `messages`, else `prompt`): a string becomes one
user message; a list of chat messages is the conversation, with any trailing assistant
turns left out (kept as the row's "reference"). --model is a Hugging Face folder, a Hub name,
or a train.py checkpoint / run folder (local or s3://, exported once to a cache folder).

Sampling presets (the seeds' settings; explicit flags override a preset's values):
  greedy      temperature 0
  submission  temperature 0.6, top-p 0.95 (leaderboard submissions)
  beam        beam search, width 4, length penalty 0.9, all 4 beams returned
Backends: `vllm` (GPU; vllm.LLM on the exported Hugging Face folder) and `transformers`
(model.generate, left-padded batches of --batch-size); `auto` takes vLLM when it is
installed and a GPU is present. Both write the same rows: one per returned sequence, with
index, sequence, prompt, completion, prompt_tokens, completion_tokens, finish_reason,
reference (when the data has one), model, backend and the sampling settings. vLLM's
sampler draws different random numbers from transformers', so sampled replies differ
between backends even with the same --seed; greedy ones agree up to numerical noise. The
file is written whole under a temporary name, then moved into place.
"""
from __future__ import annotations

import argparse
import json
import sys

import chat_templates
import storage
from shared_flags import BATCH_SIZE, SEED
from errors import UserError

PRESETS = {
    "greedy": dict(temperature=0.0, top_p=1.0, num_beams=1, length_penalty=1.0),
    "submission": dict(temperature=0.6, top_p=0.95, num_beams=1, length_penalty=1.0),
    "beam": dict(temperature=0.0, top_p=1.0, num_beams=4, length_penalty=0.9),
}
VLLM_MISSING = ("--backend vllm needs the vllm package, which is not installed "
                "(pip install -r requirements-gpu.txt on a CUDA machine, or use --backend transformers).")


class InputError(UserError, ValueError):
    """Unusable input or flags; the message is one sentence naming file, row and field."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True,
                   help="HF folder, Hub name, .gguf file, packaged model name, or train.py checkpoint / run folder")
    chat_templates.add_flag(p)
    p.add_argument("--input", default=None, help="prompts: data file, folder or Hub data set (default: bundled SFT data)")
    p.add_argument("--split", default=None,
                   help="split to read (default: the only one, else the test split)")
    p.add_argument("--prompt-column", default=None, help="column with the prompt (default: messages, else prompt)")
    p.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    p.add_argument("--output", default="replies.jsonl", help="JSONL to write (local or s3://)")
    p.add_argument("--backend", choices=("auto", "transformers", "vllm"), default="auto", help="generation backend")
    p.add_argument("--preset", choices=tuple(PRESETS), default="greedy", help="sampling settings (see above)")
    p.add_argument("--temperature", type=float, default=None, help="override the preset's temperature (0: greedy)")
    p.add_argument("--top-p", type=float, default=None, help="override the preset's top-p")
    p.add_argument("--num-beams", type=int, default=None, help="override the preset's beam width")
    p.add_argument("--length-penalty", type=float, default=None, help="override the preset's beam length penalty")
    p.add_argument("--num-return-sequences", type=int, default=None,
                   help="sequences per prompt (default: every beam for beam search, else 1)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="reply budget in tokens")
    p.add_argument("--seed", type=int, default=SEED, help="sampling seed")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="prompts per generate call (transformers backend)")
    p.add_argument("--use-gpu", action=argparse.BooleanOptionalAction, default=False,
                   help="run the transformers backend on CUDA")
    return p


def sampling_settings(args) -> dict:
    """The preset, overridden by explicit flags, checked."""
    s = dict(PRESETS[args.preset])
    for key in ("temperature", "top_p", "num_beams", "length_penalty"):
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    s["num_return_sequences"] = args.num_return_sequences or (s["num_beams"] if s["num_beams"] > 1 else 1)
    s.update(max_new_tokens=args.max_new_tokens, seed=args.seed)
    if s["temperature"] < 0 or not 0 < s["top_p"] <= 1 or s["max_new_tokens"] < 1:
        raise InputError("--temperature must not be negative, --top-p must be in (0, 1] and --max-new-tokens "
                         "at least 1.")
    if s["num_beams"] < 1 or s["num_return_sequences"] < 1:
        raise InputError("--num-beams and --num-return-sequences must be at least 1.")
    if s["num_return_sequences"] > 1 and s["num_beams"] == 1 and s["temperature"] == 0:
        raise InputError("Greedy decoding gives one sequence per prompt: use --temperature above 0 or "
                         "--num-beams above 1 with --num-return-sequences above 1.")
    if s["num_beams"] > 1 and s["temperature"] > 0:
        raise InputError("Beam search is deterministic: use --temperature 0 with --num-beams above 1.")
    if s["num_beams"] > 1 and s["num_return_sequences"] > s["num_beams"]:
        raise InputError(f"Beam search returns at most --num-beams ({s['num_beams']}) sequences, "
                         f"not --num-return-sequences {s['num_return_sequences']}.")
    return s


def _messages(value, where: str) -> tuple[list[dict], str | None]:
    """A prompt cell -> (conversation without trailing assistant turns, the last of them or None)."""
    from custom_dataset import _check_messages
    if isinstance(value, str):
        if not value.strip():
            raise InputError(f"{where}: empty prompt.")
        return [{"role": "user", "content": value}], None
    try:
        _check_messages(value, "", need_assistant=False)
    except ValueError as e:
        raise InputError(f"{where}{str(e)}: expected a prompt string or a list of chat messages.") from None
    messages = [{"role": m["role"], "content": m["content"]} for m in value]
    reference = None
    while messages and messages[-1]["role"] == "assistant":
        reference = reference or messages[-1]["content"]
        messages.pop()
    if not messages:
        raise InputError(f"{where}: the conversation holds only assistant turns, no prompt.")
    return messages, reference


def read_prompts(name: str, split: str | None, column: str | None, limit: int | None):
    """[(row index, prompt messages, reference or None)] of a data file, folder or Hub data set."""
    from custom_dataset import DataError
    from data_files import SPLIT_ALIASES, load_splits
    try:
        splits = load_splits(name)
    except DataError as e:
        raise InputError(str(e)) from None
    if split is None:
        candidates = [s for s in (*SPLIT_ALIASES["test"]["sft"], *SPLIT_ALIASES["test"]["pref"]) if s in splits]
        split = next(iter(splits)) if len(splits) == 1 else (candidates or [None])[0]
        if split is None:
            raise InputError(f"Data set {name} has several splits ({', '.join(splits)}) and no test split; "
                             f"choose one with --split.")
    if split not in splits:
        raise InputError(f"Data set {name} has no split '{split}' (found: {', '.join(splits)}).")
    ds = splits[split]
    columns = ds.column_names
    column = column or next((c for c in ("messages", "prompt") if c in columns), None)
    if column not in columns:
        raise InputError(f"Data set {name} ({split}) has no column '{column or 'messages or prompt'}' "
                         f"(columns: {', '.join(columns)}); name one with --prompt-column.")
    if len(ds) == 0:
        raise InputError(f"Data set {name} ({split}) has no rows.")
    rows = []
    for i, value in enumerate(ds[column][:limit] if limit else ds[column]):
        rows.append((i, *_messages(value, f"Data set {name} ({split}), row {i}, field {column}")))
    return rows


def vllm_generate(model_name: str, conversations: list[list[dict]], s: dict, trust_remote_code: bool = False,
                  chat_template: str | None = None):
    """The same Completions as generation.generate_completions, from vLLM on the exported folder."""
    try:
        import vllm
    except ImportError:
        raise InputError(VLLM_MISSING) from None
    from generation import Completion
    from models import load_tokenizer, pretrained_path
    path = pretrained_path(model_name)
    tokenizer = load_tokenizer(path, trust_remote_code, chat_template)
    llm = vllm.LLM(model=path, tokenizer=path, seed=s["seed"], trust_remote_code=trust_remote_code)
    from tokenization import render
    prompts = [render(tokenizer, c, add_generation_prompt=True) for c in conversations]
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    stop = [tokenizer.eos_token_id]
    if s["num_beams"] > 1:
        from vllm.sampling_params import BeamSearchParams
        params = BeamSearchParams(beam_width=s["num_beams"], max_tokens=s["max_new_tokens"],
                                  length_penalty=s["length_penalty"])
        outputs = llm.beam_search([{"prompt_token_ids": ids} for ids in prompt_ids], params)
        results = []
        for ids, out in zip(prompt_ids, outputs):
            group = []
            for seq in out.sequences[:s["num_return_sequences"]]:
                new = list(seq.tokens[len(ids):])
                finished = tokenizer.eos_token_id in new
                new = new[:new.index(tokenizer.eos_token_id) + 1] if finished else new
                group.append(Completion(tokenizer.decode(new, skip_special_tokens=True).strip(), len(ids),
                                        len(new), "stop" if finished else "length"))
            results.append(group)
        return results
    params = vllm.SamplingParams(n=s["num_return_sequences"], temperature=s["temperature"], top_p=s["top_p"],
                                 max_tokens=s["max_new_tokens"], seed=s["seed"], stop_token_ids=stop)
    outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params)
    return [[Completion(o.text.strip(), len(ids), len(o.token_ids), o.finish_reason if o.finish_reason in
                        ("stop", "length") else "stop") for o in out.outputs]
            for ids, out in zip(prompt_ids, outputs)]


def vllm_installed() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


def choose_backend(backend: str) -> str:
    """auto: vLLM where it is installed and a GPU is present, else transformers."""
    if backend != "auto":
        return backend
    import torch
    return "vllm" if torch.cuda.is_available() and vllm_installed() else "transformers"


def main(argv: list[str] | None = None) -> int:
    from flags import EMBEDDED_DATA
    from logs import configure_logging

    args = build_parser().parse_args(argv)
    configure_logging(verbose=False)
    try:
        settings = sampling_settings(args)
        backend = choose_backend(args.backend)
        if backend == "vllm" and not vllm_installed():
            raise InputError(VLLM_MISSING)
        if args.limit is not None and args.limit < 1:
            raise InputError("--limit must be at least 1.")
        rows = read_prompts(args.input or str(EMBEDDED_DATA["sft"]), args.split, args.prompt_column, args.limit)
        conversations = [messages for _, messages, _ in rows]
        if backend == "vllm":
            outputs = vllm_generate(args.model, conversations, settings, chat_template=args.chat_template)
        else:
            from generation import generate_completions
            from models import load_trained
            model, tokenizer = load_trained(args.model, chat_template=args.chat_template)
            model.to("cuda" if args.use_gpu else "cpu")
            outputs = generate_completions(model, tokenizer, conversations, batch_size=args.batch_size,
                                           progress="generate", **settings)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    records = []
    for (index, messages, reference), group in zip(rows, outputs):
        for sequence, c in enumerate(group):
            record = {"index": index, "sequence": sequence, "prompt": messages, "completion": c.text,
                      "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
                      "finish_reason": c.finish_reason}
            if reference is not None:
                record["reference"] = reference
            records.append({**record, "model": args.model, "backend": backend, "sampling": settings})
    storage.write_text_atomic(args.output, "".join(json.dumps(r) + "\n" for r in records))
    tokens = sum(r["completion_tokens"] for r in records)
    print(f"{len(records)} completions of {len(rows)} prompts ({backend}, {args.preset}: "
          f"{json.dumps(settings)}), {tokens} tokens generated; written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
