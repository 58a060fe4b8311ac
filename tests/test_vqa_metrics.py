"""Official VQA accuracy and answer normalisation against hand-computed cases."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmfusion.errors import DataError
from mmfusion.metrics.vqa import (
    accuracy_of_count,
    normalize_answer,
    official_accuracy,
    official_targets,
    prep_ans,
    process_digit_article,
    process_punctuation,
    soft_accuracy,
    soft_score,
    vqa_accuracy,
    write_results,
)


def test_leave_one_out_hand_cases() -> None:
    assert official_accuracy("yes", ["yes"] * 10) == 1.0
    assert official_accuracy("no", ["yes"] * 10) == 0.0
    # 3 of 10 say red: the 3 subsets that drop a 'red' see 2 matches (2/3), the 7 others see 3 (1) -> 0.9
    assert official_accuracy("red", ["red"] * 3 + ["blue"] * 7) == pytest.approx((3 * 2 / 3 + 7 * 1) / 10)
    assert official_accuracy("blue", ["red"] * 3 + ["blue"] * 7) == 1.0
    # 1 of 10: the subset without it sees 0, the 9 others see 1 match (1/3) -> 0.3
    assert official_accuracy("2", ["2"] + ["3"] * 9) == pytest.approx(0.3)
    # 2 of 10: 2 subsets see 1 (1/3), 8 see 2 (2/3) -> (2/3 + 16/3)/10 = 0.6
    assert official_accuracy("cat", ["cat", "cat"] + ["dog"] * 8) == pytest.approx(0.6)


@pytest.mark.parametrize("m", range(0, 11))
def test_count_closed_form_equals_brute_force_and_soft_score(m: int) -> None:
    gts = ["a1"] * m + [f"other{i}" for i in range(10 - m)]
    brute = official_accuracy("a1", gts)
    assert accuracy_of_count(m) == pytest.approx(brute, abs=1e-12)
    assert soft_score(m) == pytest.approx(brute, abs=1e-12)


def test_normalisation_rules() -> None:
    assert process_punctuation("yes!").strip() == "yes"
    assert process_punctuation("1,000") == "1000"  # digit-comma-digit: every mark is deleted
    assert process_punctuation("3.5") == "3.5"  # a period before a digit stays
    assert process_punctuation("dog.") == "dog"
    assert process_punctuation("t-shirt") == "t shirt"  # not next to a space -> replaced by a space
    assert process_punctuation("left - right") == "left  right"  # next to a space -> deleted
    assert process_digit_article("The Two dogs") == "2 dogs"
    assert process_digit_article("none") == "0"
    assert process_digit_article("dont know") == "don't know"
    assert normalize_answer("  A red car\n") == "red car"
    assert prep_ans("Two, three") == "2 3"
    assert prep_ans("an apple") == "apple"


def test_normalisation_only_when_humans_disagree() -> None:
    # disagreeing humans: everything normalised, 'Two' == 'two' == '2'
    assert official_accuracy("Two", ["two"] * 5 + ["2"] * 5) == 1.0
    # unanimous humans: nothing is normalised (official rule), so case matters
    assert official_accuracy("Yes", ["yes"] * 10) == 0.0
    assert official_accuracy(" yes\n", ["yes"] * 10) == 1.0  # white space is always stripped


def _ann(qid: int, answers: list[str], at: str, qt: str) -> dict:
    return {
        "question_id": qid,
        "image_id": 1,
        "question_type": qt,
        "answer_type": at,
        "multiple_choice_answer": answers[0],
        "answers": [
            {"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)
        ],
    }


def test_per_answer_type_and_submission_file(tmp_path) -> None:
    anns = [
        _ann(1, ["yes"] * 10, "yes/no", "is the"),
        _ann(2, ["no"] * 9 + ["yes"], "yes/no", "is the"),
        _ann(3, ["2"] * 3 + ["3"] * 7, "number", "how many"),
        _ann(4, ["red"] * 10, "other", "what color"),
    ]
    path = write_results(tmp_path / "res.json", [1, 2, 3, 4], ["yes", "yes", "2", "blue"])
    rows = json.loads(path.read_text())
    assert rows[0] == {"question_id": 1, "answer": "yes"} and len(rows) == 4
    acc = vqa_accuracy(rows, anns)
    # q1 1.0, q2 0.3, q3 0.9, q4 0.0
    assert acc["overall"] == round(100 * (1.0 + 0.3 + 0.9 + 0.0) / 4, 2)
    assert acc["perAnswerType"] == {"yes/no": 65.0, "number": 90.0, "other": 0.0}
    assert acc["perQuestionType"]["how many"] == 90.0
    with pytest.raises(DataError, match="question_id 4"):
        vqa_accuracy({1: "yes", 2: "no", 3: "2"}, anns)


def test_soft_accuracy_reads_the_argmax_score() -> None:
    target = np.array([[1.0, 0.0, 0.3], [0.0, 0.6, 0.9]])
    pred = np.array([[5.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    np.testing.assert_allclose(soft_accuracy(pred, target), [1.0, 0.6])
    with pytest.raises(DataError):
        soft_accuracy(pred[:, :2], target)


ADVERSARIAL = [
    ["Two"] * 10,  # unanimous, un-normalised: the vocabulary's "2" scores 0 officially
    ["two"] * 5 + ["2"] * 5,  # disagreeing: everything normalised, "2" scores 1
    ["Yes"] * 10,  # unanimous capitalised: "yes" scores 0
    [" yes\n"] * 10,  # white space always stripped: "yes" scores 1
    ["a dog"] * 3 + ["the dog"] * 2 + ["cat"] * 5,  # articles dropped only because humans disagree
    ["t-shirt"] * 4 + ["t shirt"] * 6,
    ["1,000"] * 2 + ["1000"] * 3 + ["many"] * 5,
    ["red"] * 3 + ["blue"] * 7,
    ["none"] * 2 + ["0"] + ["zero"] * 7,
    ["dog."] * 10,  # unanimous with punctuation: "dog" scores 0
]
VOCAB = ["2", "yes", "dog", "cat", "t shirt", "1000", "many", "red", "blue", "0", "no", "dog."]


def test_official_targets_equal_the_official_evaluator_on_every_case() -> None:
    """Entry (i, j) is official_accuracy(VOCAB[j], answers_i), adversarial and unanimous cases included."""
    y = official_targets(ADVERSARIAL, VOCAB)
    brute = np.array([[official_accuracy(a, gts) for a in VOCAB] for gts in ADVERSARIAL], dtype=np.float32)
    np.testing.assert_allclose(y, brute, atol=1e-6)
    assert (
        y[0, VOCAB.index("2")] == 0.0 and y[1, VOCAB.index("2")] == 1.0
    )  # the two cases MCAN's targets merge
    assert y[2, VOCAB.index("yes")] == 0.0 and y[3, VOCAB.index("yes")] == 1.0
    assert y[9, VOCAB.index("dog")] == 0.0 and y[9, VOCAB.index("dog.")] == 1.0


def test_vqa_acc_from_official_targets_equals_vqa_accuracy_for_any_prediction() -> None:
    """The checkpoint-selection metric (soft_accuracy on the valid targets) equals the official overall accuracy
    for every prediction, where the MCAN-style normalised targets disagree on the adversarial cases."""
    from mmfusion.data.vqa2 import soft_targets

    anns = [_ann(i, gts, "other", "what") for i, gts in enumerate(ADVERSARIAL)]
    y = official_targets(ADVERSARIAL, VOCAB)
    rng = np.random.default_rng(0)
    for _ in range(50):
        scores = rng.normal(size=(len(ADVERSARIAL), len(VOCAB)))
        answers = {i: VOCAB[j] for i, j in enumerate(scores.argmax(1))}
        official = vqa_accuracy(answers, anns, ndigits=10)["overall"]
        assert 100 * soft_accuracy(scores, y).mean() == pytest.approx(official, abs=1e-6)
    # an oracle that always picks the best-scoring vocabulary answer under MCAN's normalised targets is
    # over-credited by them and scored exactly by the official targets
    mcan = soft_targets(anns, {a: j for j, a in enumerate(VOCAB)})
    picks = mcan.argmax(1)
    official = vqa_accuracy({i: VOCAB[j] for i, j in enumerate(picks)}, anns, ndigits=10)["overall"]
    assert 100 * soft_accuracy(mcan, y).mean() == pytest.approx(official, abs=1e-6)
    assert 100 * soft_accuracy(mcan, mcan).mean() > official + 5
