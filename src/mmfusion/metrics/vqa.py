"""Official VQA accuracy and answer normalisation (VQA-v2; Farinhas 2021, Ch. 6).

Follows ``GT-Vision-Lab/VQA/PythonEvaluationTools/vqaEvaluation/vqaEval.py`` (current official rule):

* answers are stripped of ``\\n``, ``\\t`` and surrounding white space;
* only when the 10 human answers are **not all identical**, the human answers and the predicted answer go through
  :func:`process_punctuation` and :func:`process_digit_article`;
* Acc(a) = 1/10 sum_i min(1, #{j != i : a_j = a} / 3) -- the mean over the 10 leave-one-out subsets of 9 humans;
* reported as 100 * mean, rounded to 2 decimals, overall, per answer type and per question type.

:func:`prep_ans` is MCAN's training-side normalisation (``core/data/ans_punct.py``): punctuation, digits and
articles, then commas removed. :func:`soft_score` is MCAN's target score of an answer given by m humans; it equals
:func:`accuracy_of_count` (the official accuracy of that answer) for every m.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmfusion.errors import DataError

CONTRACTIONS: dict[str, str] = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "couldn'tve": "couldn't've",
    "couldnt've": "couldn't've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hadnt've": "hadn't've",
    "hadn'tve": "hadn't've",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hed've": "he'd've",
    "he'dve": "he'd've",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "Id've": "I'd've",
    "I'dve": "I'd've",
    "Im": "I'm",
    "Ive": "I've",
    "isnt": "isn't",
    "itd": "it'd",
    "itd've": "it'd've",
    "it'dve": "it'd've",
    "itll": "it'll",
    "let's": "let's",
    "maam": "ma'am",
    "mightnt": "mightn't",
    "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "notve": "not've",
    "oclock": "o'clock",
    "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at",
    "shant": "shan't",
    "shed've": "she'd've",
    "she'dve": "she'd've",
    "she's": "she's",
    "shouldve": "should've",
    "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll",
    "somebodys": "somebody's",
    "someoned": "someone'd",
    "someoned've": "someone'd've",
    "someone'dve": "someone'd've",
    "someonell": "someone'll",
    "someones": "someone's",
    "somethingd": "something'd",
    "somethingd've": "something'd've",
    "something'dve": "something'd've",
    "somethingll": "something'll",
    "thats": "that's",
    "thered": "there'd",
    "thered've": "there'd've",
    "there'dve": "there'd've",
    "therere": "there're",
    "theres": "there's",
    "theyd": "they'd",
    "theyd've": "they'd've",
    "they'dve": "they'd've",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "wed've": "we'd've",
    "we'dve": "we'd've",
    "weve": "we've",
    "werent": "weren't",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "whod": "who'd",
    "whod've": "who'd've",
    "who'dve": "who'd've",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldve": "would've",
    "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've",
    "yall": "y'all",
    "yall'll": "y'all'll",
    "y'allll": "y'all'll",
    "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've",
    "youd": "you'd",
    "youd've": "you'd've",
    "you'dve": "you'd've",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}
MANUAL_MAP: dict[str, str] = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES = ("a", "an", "the")
PUNCT = (
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
)
# Copied verbatim: "(?!<=\d)" is a (no-op) look-ahead in the official code, so any "." not followed by a digit goes.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
ANSWER_TYPES = ("yes/no", "number", "other")


def process_punctuation(text: str) -> str:
    """Official ``processPunctuation``: a punctuation mark next to a space (or anywhere, if the string has a
    digit-comma-digit) is deleted, otherwise replaced by a space; periods not followed by a digit are deleted."""
    out = text
    strip_all = _COMMA_STRIP.search(text) is not None
    for p in PUNCT:
        if strip_all or (p + " " in text or " " + p in text):
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    # the official code passes re.UNICODE (= 32) as the *count* argument: at most 32 periods are removed.
    return _PERIOD_STRIP.sub("", out, count=int(re.UNICODE))


def process_digit_article(text: str) -> str:
    """Official ``processDigitArticle``: lower-case, number words -> digits ('none' -> '0'), drop a/an/the,
    fix contractions (dont -> don't)."""
    words = [MANUAL_MAP.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(answer: str) -> str:
    """Whitespace strip + punctuation + digits/articles (the official evaluation normalisation)."""
    a = answer.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(a))


def prep_ans(answer: str) -> str:
    """MCAN's ``prep_ans`` (answer vocabulary and soft targets): punctuation, digits/articles, commas removed."""
    return process_digit_article(process_punctuation(answer)).replace(",", "")


def accuracy_of_count(m: int, n_humans: int = 10) -> float:
    """Official accuracy of an answer given by ``m`` of ``n_humans`` annotators (closed form of the mean over the
    leave-one-out subsets): [m min(1, (m-1)/3) + (n-m) min(1, m/3)] / n."""
    if m <= 0:
        return 0.0
    return (m * min(1.0, (m - 1) / 3) + (n_humans - m) * min(1.0, m / 3)) / n_humans


def soft_score(m: int) -> float:
    """MCAN's ``get_score``: 0, 0.3, 0.6, 0.9, 1.0 for m = 0, 1, 2, 3, >=4 humans (= ``accuracy_of_count`` for
    10 annotators)."""
    return (0.0, 0.3, 0.6, 0.9)[m] if m < 4 else 1.0


def official_accuracy(prediction: str, gt_answers: Sequence[str]) -> float:
    """Accuracy in [0, 1] of one predicted answer against the human answers (official rule, see module doc)."""
    gts = [g.replace("\n", " ").replace("\t", " ").strip() for g in gt_answers]
    res = prediction.replace("\n", " ").replace("\t", " ").strip()
    if not gts:
        raise DataError("official_accuracy: a question has no ground-truth answers")
    if len(set(gts)) > 1:
        gts = [process_digit_article(process_punctuation(g)) for g in gts]
        res = process_digit_article(process_punctuation(res))
    accs = []
    for i in range(len(gts)):
        matches = sum(1 for j, g in enumerate(gts) if j != i and g == res)
        accs.append(min(1.0, matches / 3))
    return sum(accs) / len(accs)


def official_targets(gt_answers: Sequence[Sequence[str]], vocabulary: Sequence[str]) -> np.ndarray:
    """(N, A) float32: entry (i, j) is the official accuracy (:func:`official_accuracy`) of predicting
    ``vocabulary[j]`` for question i with human answers ``gt_answers[i]``.

    Evaluation targets, so that :func:`soft_accuracy` of any prediction equals the official evaluator question by
    question -- including the case MCAN's training targets (:func:`soft_targets` in ``data/vqa2.py``, always
    normalised by :func:`prep_ans`) get wrong: unanimous human answers are compared *un-normalised* (10 x "Two"
    gives the vocabulary answer "2" an official accuracy of 0). Computed in closed form per distinct answer with
    :func:`accuracy_of_count` instead of calling :func:`official_accuracy` A times per question.
    """
    vocab = [str(a) for a in vocabulary]
    stripped_ix: dict[str, list[int]] = defaultdict(list)
    normed_ix: dict[str, list[int]] = defaultdict(list)
    for j, a in enumerate(vocab):
        s = a.replace("\n", " ").replace("\t", " ").strip()
        stripped_ix[s].append(j)
        normed_ix[process_digit_article(process_punctuation(s))].append(j)
    y = np.zeros((len(gt_answers), len(vocab)), dtype=np.float32)
    for i, answers in enumerate(gt_answers):
        gts = [g.replace("\n", " ").replace("\t", " ").strip() for g in answers]
        if not gts:
            raise DataError(f"official_targets: question {i} has no ground-truth answers")
        unanimous = len(set(gts)) == 1
        if not unanimous:
            gts = [process_digit_article(process_punctuation(g)) for g in gts]
        index = stripped_ix if unanimous else normed_ix
        for ans, m in Counter(gts).items():
            for j in index.get(ans, ()):
                y[i, j] = accuracy_of_count(m, len(gts))
    return y


def vqa_accuracy(
    results: Mapping[int, str] | Iterable[Mapping[str, Any]],
    annotations: Iterable[Mapping[str, Any]],
    ndigits: int = 2,
) -> dict[str, Any]:
    """Official VQA evaluation.

    ``results``: ``{question_id: answer}`` or the submission list ``[{"question_id", "answer"}]``.
    ``annotations``: the ``annotations`` list of a ``v2_mscoco_*_annotations.json`` file (each with
    ``question_id``, ``answers``, ``answer_type``, ``question_type``). Every annotated question must have a result.
    Returns ``{"overall", "perAnswerType", "perQuestionType", "n"}`` in percent, rounded like the official code.
    """
    if not isinstance(results, Mapping):
        results = {int(r["question_id"]): str(r["answer"]) for r in results}
    acc_all: list[float] = []
    by_at: dict[str, list[float]] = defaultdict(list)
    by_qt: dict[str, list[float]] = defaultdict(list)
    for ann in annotations:
        qid = int(ann["question_id"])
        if qid not in results:
            raise DataError(
                f"vqa_accuracy: no result for question_id {qid}; the results must cover every question"
            )
        acc = official_accuracy(results[qid], [a["answer"] for a in ann["answers"]])
        acc_all.append(acc)
        by_at[ann.get("answer_type", "other")].append(acc)
        by_qt[ann.get("question_type", "")].append(acc)
    if not acc_all:
        raise DataError("vqa_accuracy: no annotations given")

    def pct(v: list[float]) -> float:
        return round(100.0 * float(sum(v)) / len(v), ndigits)

    return {
        "overall": pct(acc_all),
        "perAnswerType": {k: pct(v) for k, v in by_at.items()},
        "perQuestionType": {k: pct(v) for k, v in by_qt.items()},
        "n": len(acc_all),
    }


def soft_accuracy(prediction: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-question accuracy of the arg-max answer read off the soft-score targets: ``target[i, argmax p_i]``.

    With MCAN's soft scores (:func:`soft_score`) this is the official accuracy of the predicted answer whenever the
    human answers are normalised consistently (answers outside the vocabulary cannot be predicted and score 0
    either way); use :func:`vqa_accuracy` on a results file for the exact official number.
    """
    prediction = np.asarray(prediction)
    target = np.asarray(target)
    if prediction.shape != target.shape or prediction.ndim != 2:
        raise DataError(
            f"soft_accuracy: prediction {prediction.shape} and target {target.shape} must be equal (N, A)"
        )
    return target[np.arange(len(target)), prediction.argmax(axis=1)].astype(np.float64)


def write_results(path: str | Path, question_ids: Sequence[int], answers: Sequence[str]) -> Path:
    """Write the official submission file: a JSON list ``[{"question_id": int, "answer": str}, ...]``."""
    if len(question_ids) != len(answers):
        raise DataError(f"write_results: {len(question_ids)} question ids but {len(answers)} answers")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"question_id": int(q), "answer": str(a)} for q, a in zip(question_ids, answers)]
    path.write_text(json.dumps(rows))
    return path
