"""Judges and win rate: ties count half, the endpoint judge against a local HTTP server that
speaks the OpenAI chat-completions format, and answer extraction for the correctness judge."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from judges import (CorrectnessJudge, EndpointJudge, JudgeError, LengthJudge, final_answer, judge_pairs, summarize,
                    win_rate)

PROMPT = [{"role": "user", "content": "Say something."}]


def test_length_judge_win_rate_on_constructed_pairs():
    """4 prompts: policy longer twice (wins), equal once (tie), shorter once (loss):
    (2 + 0.5 * 1) / 4 = 0.625."""
    policy = ["a longer reply", "long enough", "same", "x"]
    reference = ["short", "short", "four", "much longer"]
    records = judge_pairs(LengthJudge(), [PROMPT] * 4, [None] * 4, policy, reference)
    assert [r["outcome"] for r in records] == ["win", "win", "tie", "loss"]
    result = summarize(records)
    assert (result.wins, result.ties, result.losses, result.n, result.rate) == (2, 1, 1, 4, 0.625)
    assert win_rate([1.0, 1.0], [1.0, 1.0]).rate == 0.5 and win_rate([2.0], [1.0]).rate == 1.0


def test_final_answer_and_correctness_judge():
    assert final_answer("2 + 3 = 5. The answer is 5.") == "5"
    assert final_answer("so \\boxed{1,000} and the answer is: $12.50") == "12.5"   # the last one counts
    assert final_answer("no number here") is None
    judge = CorrectnessJudge()
    assert judge.score([PROMPT] * 3, ["The answer is 7.", "The answer is 8.", "I don't know."],
                       ["... The answer is 7."] * 3) == [1.0, 0.0, 0.0]
    with pytest.raises(JudgeError, match="final answer"):
        judge.score([PROMPT], ["The answer is 7."], ["no answer in this reference"])


class _RewardHandler(BaseHTTPRequestHandler):
    """POST /v1/chat/completions: reward = number of words of the last (assistant) message,
    in the format NVIDIA's reward endpoints use; requires the bearer token; the first request
    of a fresh server fails with 503 to exercise the retry."""
    requests = []
    fail_next = True

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if type(self).fail_next:
            type(self).fail_next = False
            self.send_response(503)
            self.end_headers()
            return
        if self.headers.get("Authorization") != "Bearer test-judge-key":
            self.send_response(401)
            self.end_headers()
            self.wfile.write(b'{"error": "bad key"}')
            return
        words = len(body["messages"][-1]["content"].split())
        answer = {"id": "x", "object": "chat.completion", "model": body["model"],
                  "choices": [{"index": 0, "finish_reason": "stop",
                               "message": {"role": "assistant", "content": f"reward:{words / 2}"}}]}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def reward_server():
    _RewardHandler.requests, _RewardHandler.fail_next = [], True
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RewardHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_endpoint_judge_speaks_the_chat_completions_format(reward_server, monkeypatch):
    monkeypatch.setenv("TEST_JUDGE_KEY", "test-judge-key")
    judge = EndpointJudge("nvidia/llama-3.1-nemotron-70b-reward", reward_server, "TEST_JUDGE_KEY")
    records = judge_pairs(judge, [PROMPT] * 2, [None] * 2, ["one two three four", "one"], ["one two", "one"])
    assert [r["policy_score"] for r in records] == [2.0, 0.5] and [r["reference_score"] for r in records] == [1.0, 0.5]
    assert summarize(records).rate == 0.75
    first, second = _RewardHandler.requests[:2]
    assert first["body"] == second["body"]                   # the 503 was retried with the same request
    assert second["path"] == "/v1/chat/completions" and second["auth"] == "Bearer test-judge-key"
    assert second["body"] == {"model": "nvidia/llama-3.1-nemotron-70b-reward",
                              "messages": PROMPT + [{"role": "assistant", "content": "one two three four"}]}


def test_endpoint_judge_errors_are_one_sentence(reward_server, monkeypatch):
    monkeypatch.delenv("UNSET_JUDGE_KEY", raising=False)
    with pytest.raises(JudgeError, match=r"\$UNSET_JUDGE_KEY, which is not set"):
        EndpointJudge("m", reward_server, "UNSET_JUDGE_KEY")
    monkeypatch.setenv("WRONG_JUDGE_KEY", "wrong")
    _RewardHandler.fail_next = False
    with pytest.raises(JudgeError, match="answered HTTP 401"):
        EndpointJudge("m", reward_server, "WRONG_JUDGE_KEY").score([PROMPT], ["hi"])
    with pytest.raises(JudgeError, match="cannot be reached"):
        EndpointJudge("m", "http://127.0.0.1:9/v1", "WRONG_JUDGE_KEY", retries=0).score([PROMPT], ["hi"])


def test_judge_pairs_scores_in_the_judges_batches(monkeypatch, capsys):
    """7 prompts, a judge with batch_size 3: judge_pairs calls it on 3 + 3 + 1 policy replies,
    then 3 + 3 + 1 reference replies (the batches a reward model scores anyway, so the scores
    do not change), and a bar counts the 14 replies on stderr. Scores are lengths: policy
    replies of 1..7 characters against 4 each, so wins at 5, 6, 7, a tie at 4: (3 + 0.5) / 7."""
    import generation
    monkeypatch.setattr(generation, "PROGRESS_DELAY_S", 0.0)

    class Batched(LengthJudge):
        batch_size, calls = 3, []

        def score(self, prompts, replies, references=None):
            self.calls.append(len(replies))
            return super().score(prompts, replies, references)

    judge = Batched()
    records = judge_pairs(judge, [PROMPT] * 7, [None] * 7, ["x" * n for n in range(1, 8)], ["four"] * 7)
    assert judge.calls == [3, 3, 1, 3, 3, 1]
    assert [r["policy_score"] for r in records] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    assert summarize(records).rate == pytest.approx(3.5 / 7)
    assert "judging" in capsys.readouterr().err
