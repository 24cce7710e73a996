"""experiments/probe_base.py: its step checks are right by construction, and its probes return
shares of the held-out problems."""
import random
import re

import pytest

from experiments import probe_base


def test_step_check_redoes_every_step_and_flags_the_slip():
    solution = "Ann starts with 16 pens. After selling 2 she has 16 - 2 = 24. After buying 12 she has 24 + 12 = 36."
    assert probe_base.step_check(solution) == ("Step 1: 16 - 2 = 24. Redo: 16 - 2 = 14. Wrong.\n"
                                               "Step 2: 24 + 12 = 36. Redo: 24 + 12 = 36. Right.")


def test_drill_lines_say_right_exactly_when_the_claim_holds():
    rng = random.Random(0)
    verdicts = []
    for _ in range(200):
        for a, op, b, c, v, verdict in re.findall(r"(\d+) (\S) (\d+) = (\d+)\. Redo: \1 \2 \3 = (\d+)\. (Right|Wrong)\.",
                                                  probe_base.drill(rng)):
            assert (verdict == "Right") == (c == v) and int(v) == probe_base.task._apply(op, int(a), int(b))
            assert 0 <= int(c) <= 99
            verdicts.append(verdict)
    assert 0.3 < verdicts.count("Wrong") / len(verdicts) < 0.6      # about half the claims slipped


def test_probes_of_the_bundled_model():
    result = probe_base.main(["--problems", "4", "--threads", "1"])
    assert result["steps"] == {"Right": 14, "Wrong": 4}     # 9 steps in all; one slip per incorrect solution
    for key in ("answer_right", "name_copied", "wrong_steps_called_wrong"):
        assert result[key] * 4 == round(result[key] * 4)            # shares of 4 problems (4 slips)
    assert result["right_steps_called_right"] * 14 == pytest.approx(round(result["right_steps_called_right"] * 14))
    # The bundled model makes up the person's name in its answers (README, GenRM section).
    assert result["name_copied"] == 0


def test_more_pretraining_needs_a_folder_to_save_to(capsys):
    with pytest.raises(SystemExit):
        probe_base.main(["--continue-steps", "2"])
    assert "--continue-steps needs --out" in capsys.readouterr().err
