"""Each task's metric on cases computed by hand, in both modes (the paper's code and dora's strict rules)."""

from __future__ import annotations

import sys

import pytest

from dora.errors import ConfigError
from dora.pipeline.tasks.catalog import TASKS, WLP_LABELS, get_task
from dora.pipeline.tasks.metrics import (
    METRIC_MODES,
    BertScore,
    TaskScorer,
    accuracy,
    bert_ibleu,
    bleu,
    classification_prf,
    encoder_layer,
    paper_bert_ibleu,
    paper_ner_parse,
    paper_ner_postprocess,
    paper_postprocess,
    paper_prf,
    paper_sentence_bleu,
    paper_squad,
    parse_wlp,
    patch_empty_input,
    require_encoder,
    rouge,
    score,
    squad,
    stance,
    wlp,
    wlp_spans,
)


def test_all_six_paper_tasks_exist_with_prefixes():
    assert set(TASKS) == {"fever", "multipit_id", "stanceosaurus", "wlp", "nq", "multipit_gen"}
    assert get_task("nq").source_prefix == "nq: "
    assert get_task("multipit_id").labels == ("YES", "NO")


def test_paper_class_ids():
    assert get_task("fever").paper_label_ids == {"REFUTES": 0, "SUPPORTS": 1}
    assert get_task("multipit_id").paper_label_ids == {"NO": 0, "YES": 1}
    assert get_task("stanceosaurus").paper_labels == ("IRRELEVANT", "SUPPORTING", "REFUTING", "DISCUSSING", "QUERYING")
    assert len(WLP_LABELS) == 20 and WLP_LABELS[0] == "AMOUNT" and WLP_LABELS[-3:] == ("MISC", "PH", "UNIT")
    assert get_task("wlp").paper_labels == WLP_LABELS
    assert get_task("nq").paper_labels is None
    # A prefix override keeps everything else.
    assert get_task("fever", prefix="claim: ").paper_labels == ("REFUTES", "SUPPORTS")


def test_generic_task_needs_a_known_metric():
    assert get_task("mytask", metric="bleu").metric == "bleu"
    with pytest.raises(ConfigError, match="unknown task"):
        get_task("mytask")
    with pytest.raises(ConfigError, match="not one of"):
        get_task("mytask", metric="perplexity")
    with pytest.raises(ConfigError, match="scored with"):
        get_task("fever", metric="bleu")


def test_importing_metrics_loads_no_heavy_library():
    import subprocess

    code = ("import sys, dora.pipeline.tasks.metrics; "
            "print(sorted(m for m in ('torch', 'transformers', 'bert_score', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- classification ------------------------------------------------------------------------------


def test_accuracy_fever_strict_is_case_insensitive_and_unparseable_is_wrong():
    out = accuracy(["SUPPORTS", " refutes ", "SUPPORTS", "maybe"], ["SUPPORTS", "REFUTES", "REFUTES", "SUPPORTS"],
                   ["SUPPORTS", "REFUTES"])
    assert out == {"accuracy": 0.5, "n": 4.0}


def test_accuracy_fever_paper_maps_unparseable_to_refutes():
    task = get_task("fever")
    assert paper_postprocess(task, ["supports", "maybe", ""], ["SUPPORTS", "REFUTES", "supports"]) == (
        [1, 0, 0], [1, 0, 1])
    out = TaskScorer(task, ["SUPPORTS", "REFUTES", "supports"])(["supports", "maybe", ""])
    assert out["paper"]["accuracy"] == pytest.approx(2 / 3)
    assert out["strict"]["accuracy"] == pytest.approx(1 / 3)


def test_multipit_id_paper_maps_unparseable_to_no():
    out = TaskScorer(get_task("multipit_id"), ["YES", "NO", "YES"])(["yes", "??", "No"])
    assert out["paper"]["accuracy"] == pytest.approx(2 / 3)
    assert out["strict"]["accuracy"] == pytest.approx(1 / 3)


def test_stance_strict_micro_macro_by_hand():
    gold = ["Supporting", "Supporting", "Refuting", "Querying", "Irrelevant", "Discussing"]
    pred = ["supporting", "Refuting", "Refuting", "???", "Irrelevant", "Irrelevant"]
    out = stance(pred, gold)
    # TP: Supporting 1, Refuting 1, Irrelevant 1 -> 3; FP: Refuting 1, Irrelevant 1 -> 2; FN: 3 (one is unparseable)
    assert out["micro_precision"] == pytest.approx(3 / 5)
    assert out["micro_recall"] == pytest.approx(3 / 6)
    assert out["micro_f1"] == pytest.approx(2 * 0.6 * 0.5 / 1.1)
    # per label (P, R): Irrelevant (1/2, 1), Supporting (1, 1/2), Refuting (1/2, 1), Discussing (0, 0), Querying (0, 0)
    f = lambda p, r: 2 * p * r / (p + r)
    assert out["macro_f1"] == pytest.approx((f(0.5, 1) + f(1, 0.5) + f(0.5, 1)) / 5)
    assert out["macro_precision"] == pytest.approx((0.5 + 1 + 0.5) / 5)
    assert out["accuracy"] == pytest.approx(3 / 6)


def test_stance_paper_same_case_unparseable_is_irrelevant():
    gold = ["Supporting", "Supporting", "Refuting", "Querying", "Irrelevant", "Discussing"]
    pred = ["supporting", "Refuting", "Refuting", "???", "Irrelevant", "Irrelevant"]
    out = score(get_task("stanceosaurus"), pred, gold, mode="paper")
    # ids: gold [1, 1, 2, 4, 0, 3], pred [1, 2, 2, 0, 0, 0]; micro = accuracy = 3/6
    assert out["micro_precision"] == out["micro_recall"] == out["micro_f1"] == pytest.approx(0.5)
    # per label (P, R): Irrelevant (1/3, 1), Supporting (1, 1/2), Refuting (1/2, 1), Discussing (0, 0), Querying (0, 0)
    assert out["macro_precision"] == pytest.approx((1 / 3 + 1 + 0.5) / 5)
    assert out["macro_recall"] == pytest.approx((1 + 0.5 + 1) / 5)
    assert out["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 2 / 3) / 5)


def test_macro_averages_over_labels_present_only():
    # A predicted label absent from the references counts in the macro average (with P 0 and R 0).
    out = classification_prf(["a", "c"], ["a", "b"], ["a", "b", "c"])
    assert out["macro_f1"] == pytest.approx((1 + 0 + 0) / 3)
    assert paper_prf([0, 2], [0, 1])["macro_f1"] == pytest.approx(1 / 3)


def test_reference_outside_label_set_names_label_and_fix():
    with pytest.raises(ConfigError, match=r"'zzz' \(row 0\) is not one of the labels.*--task NAME --metric"):
        classification_prf(["a"], ["zzz"], ["a", "b"])
    with pytest.raises(ConfigError, match="'Neutral'.*fix the target column"):
        TaskScorer(get_task("stanceosaurus"), ["Supporting", "Neutral"])


def test_generic_metrics_are_the_same_in_both_modes():
    task = get_task("mytask", metric="f1")
    out = TaskScorer(task, ["x", "y", "y"])(["x", "Y", "z"])
    assert out["paper"] == out["strict"]
    assert out["strict"]["accuracy"] == pytest.approx(2 / 3)
    generic_squad = TaskScorer(get_task("qa", metric="squad"), ["the"])([""])
    assert generic_squad["paper"]["f1"] == generic_squad["strict"]["f1"] == 1.0  # strict, not the nq rule


# --- WLP ------------------------------------------------------------------------------------------


def test_wlp_parse_real_target():
    target = "25 μl [Amount] RXN [Reagent] FINAL [Modifier] 10 μM [Concentration] Forward Primer [Reagent]"
    assert parse_wlp(target) == {"25 μl": "AMOUNT", "RXN": "REAGENT", "FINAL": "MODIFIER",
                                 "10 μM": "CONCENTRATION", "Forward Primer": "REAGENT"}
    assert parse_wlp("no labels here") == {}
    assert parse_wlp("Adjust [Action] to 7.4 [pH] in total [Misc] 1 [Unit]") == {
        "Adjust": "ACTION", "to 7.4": "PH", "in total": "MISC", "1": "UNIT"}


def test_wlp_spans_keep_repeats_and_ignore_unknown_labels():
    assert wlp_spans("Mix [Action] 50 mL [Amount] x [Foo] 50 mL [Amount]") == [
        ("Mix", "ACTION"), ("50 mL", "AMOUNT"), ("x [Foo] 50 mL", "AMOUNT")]


def test_wlp_strict_scores_over_gold_spans():
    gold = ["Mix [Action] reagents [Reagent] completely [Modifier]", "Spin [Action] tube [Location]"]
    pred = ["Mix [action] reagents [Location] extra [Reagent]", "Spin [Action] tube [LOCATION]"]
    out = wlp(pred, gold)
    # gold spans: Mix/Action TP, reagents/Reagent wrong (FN Reagent, FP Location), completely missing (FN Modifier),
    # Spin/Action TP, tube/Location TP; the extra predicted span is ignored.
    assert out["micro_precision"] == pytest.approx(3 / 4)
    assert out["micro_recall"] == pytest.approx(3 / 5)
    # macro over Action (1, 1), Reagent (0, 0), Location (1/2, 1), Modifier (0, 0)
    assert out["macro_f1"] == pytest.approx((1 + 0 + 2 / 3 + 0) / 4)


def test_wlp_strict_counts_each_repeated_span():
    gold = ["Add [Action] 50 mL [Amount] EDTA [Reagent] 50 mL [Amount]"]
    out = wlp(["Add [Action] 50 mL [Amount] EDTA [Reagent]"], gold)
    assert out["micro_recall"] == pytest.approx(3 / 4) and out["micro_precision"] == 1.0


def test_wlp_paper_parser_drops_last_word():
    assert paper_ner_parse("Mix [Action] 50 mL [Amount] NaCl [Reagent]") == {"": "[Reagent]", "50": "[Amount]"}
    # A label first: the paper's slice words[0:-1] takes everything but the last word.
    assert paper_ner_parse("[Action] a b [Reagent]") == {"[Action] a b": "[Action]", "a": "[Reagent]"}
    assert paper_ner_parse("x[Action] y [Foo]") == {}
    preds, golds = paper_ner_postprocess(["Stir [Action] buffer A [reagent]"],
                                         ["Stir [Action] buffer A [Reagent] ice [Location]"])
    # gold entities: "" (Stir's, overwritten by ice's: Location) and "buffer" (Reagent); both in the prediction
    assert golds == ["Location", "Reagent"]
    assert preds == ["Action", "reagent"]


def test_wlp_paper_missing_entity_is_amount():
    preds, golds = paper_ner_postprocess(["Stir [Action]"], ["Stir [Action] cold buffer A [Reagent]"])
    assert (preds, golds) == (["Action", "AMOUNT"], ["Action", "Reagent"])
    out = score(get_task("wlp"), ["Stir [Action]"], ["Stir [Action] cold buffer A [Reagent]"], mode="paper")
    # ids: gold [ACTION 5, REAGENT 1], pred [5, AMOUNT 0]: AMOUNT (P 0, R 0), REAGENT (0, 0), ACTION (1, 1)
    assert out["micro_f1"] == pytest.approx(0.5)
    assert out["macro_f1"] == pytest.approx(1 / 3)


def test_wlp_paper_without_any_gold_entity_is_an_error():
    with pytest.raises(ConfigError, match="undefined without a single gold label"):
        score(get_task("wlp"), ["x"], ["no entities"], mode="paper")


# --- SQuAD ----------------------------------------------------------------------------------------


def test_squad_normalisation_and_f1():
    out = squad(["The Beatles!", "james ray", "Paris France"], ["beatles", "James Ray", "Paris"])
    assert out["exact_match"] == pytest.approx(2 / 3)
    assert out["f1"] == pytest.approx((1 + 1 + 2 * 0.5 * 1 / 1.5) / 3)
    assert squad(["x"], ["y|||x"])["exact_match"] == 1.0


def test_squad_both_empty_strict_one_paper_zero():
    assert squad(["a"], ["The"]) == {"exact_match": 1.0, "f1": 1.0, "n": 1.0}
    assert paper_squad(["a"], ["The"]) == {"exact_match": 1.0, "f1": 0.0, "n": 1.0}
    assert squad([""], ["Paris"])["f1"] == 0.0
    assert paper_squad(["x"], ["y|||x"])["exact_match"] == 0.0  # one answer: the whole string


# --- BLEU / ROUGE ---------------------------------------------------------------------------------


def test_bleu_perfect_and_zero():
    assert bleu(["the cat sat on the mat"], ["the cat sat on the mat"])["bleu"] == pytest.approx(1.0)
    assert bleu(["dog"], ["the cat sat on the mat"])["bleu"] == pytest.approx(0.0)
    assert TaskScorer(get_task("mt", metric="bleu"), ["a b c d"])(["a b c d"])["paper"]["bleu"] == pytest.approx(1.0)


def test_paper_sentence_bleu_by_hand():
    # 13a splits the comma: "the cat , the mat" shares no 3-gram with the reference -> 0 without smoothing.
    assert paper_sentence_bleu("the cat, the mat", "the cat sat on the mat") == 0.0
    # 6 tokens against 7: p1 6/6, p2 4/5, p3 3/4, p4 2/3; brevity penalty exp(1 - 7/6).
    import math

    expected = math.exp((math.log(4 / 5) + math.log(3 / 4) + math.log(2 / 3)) / 4) * math.exp(1 - 7 / 6)
    assert paper_sentence_bleu("the cat sat on a mat", "the cat sat on a red mat") == pytest.approx(expected, abs=1e-12)
    assert paper_sentence_bleu("", "a b") == 0.0 and paper_sentence_bleu("a b", "") == 0.0


def test_rouge_by_hand():
    out = rouge(["the cat was found under the bed"], ["the cat was under the bed"])
    # unigrams: overlap 6 of pred 7 / ref 6; bigrams: overlap 4 of 6 / 5; LCS 6
    assert out["rouge1"] == pytest.approx(2 * (6 / 7) * 1 / (6 / 7 + 1))
    assert out["rouge2"] == pytest.approx(2 * (4 / 6) * (4 / 5) / (4 / 6 + 4 / 5))
    assert out["rougeL"] == pytest.approx(out["rouge1"])


# --- errors ---------------------------------------------------------------------------------------


def test_length_mismatch_is_an_error():
    with pytest.raises(ConfigError, match="2 predictions for 1 references"):
        accuracy(["a", "b"], ["a"])
    with pytest.raises(ConfigError, match="2 predictions for 1 references"):
        TaskScorer(get_task("fever"), ["SUPPORTS"])(["SUPPORTS", "SUPPORTS"])


def test_bad_mode_empty_set_and_non_text_are_errors():
    with pytest.raises(ConfigError, match="metric mode 'lenient' is not one of paper, strict"):
        score(get_task("fever"), ["SUPPORTS"], ["SUPPORTS"], mode="lenient")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="no rows"):
        score(get_task("nq"), [], [])
    with pytest.raises(ConfigError, match="prediction row 1 is NoneType"):
        score(get_task("nq"), ["a", None], ["a", "b"])  # type: ignore[list-item]
    assert METRIC_MODES == ("paper", "strict")


def test_task_scorer_scores_both_modes_and_primary_keys_exist():
    for name, refs, preds in [("fever", ["SUPPORTS"], ["supports"]), ("nq", ["Paris"], ["paris"]),
                              ("wlp", ["Mix [Action] it [Reagent]"], ["Mix [Action] it [Reagent]"]),
                              ("stanceosaurus", ["Querying"], ["querying"]), ("multipit_id", ["NO"], ["no"])]:
        task = get_task(name)
        scorer = TaskScorer(task, refs)
        out = scorer(preds)
        assert set(out) == {"paper", "strict"} and scorer.describe() == {}
        assert out["paper"][task.primary] == out["strict"][task.primary] == 1.0, name
        assert set(out["paper"]) == set(out["strict"]), name
        assert scorer(preds, modes=("strict",)).keys() == {"strict"}


# --- BERTScore / BERT-iBLEU -----------------------------------------------------------------------


def test_encoder_layer_by_name_or_config(tmp_path):
    assert encoder_layer(tmp_path / "deberta-xlarge-mnli") == 40  # known by name; nothing is read
    assert encoder_layer(tmp_path / "roberta-large") == 17
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "config.json").write_text('{"model_type": "bert", "num_hidden_layers": 3}')
    assert encoder_layer(tmp_path / "mine") == 3
    with pytest.raises(ConfigError, match="cannot read the encoder config"):
        encoder_layer(tmp_path / "missing")


def test_encoder_must_be_a_local_directory(tmp_path):
    with pytest.raises(ConfigError, match="not a local Hugging Face model directory"):
        BertScore(tmp_path, ["a"])
    assert require_encoder(tmp_path) == tmp_path


def test_patch_leaves_a_complete_tokenizer_alone():
    class Old:
        def build_inputs_with_special_tokens(self, ids, ids_1=None):
            return [1, *ids, 2]

    assert patch_empty_input(Old()) is False

    class New:
        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [101, 102]}

    tok = New()
    assert patch_empty_input(tok) is True
    assert tok.build_inputs_with_special_tokens([]) == [101, 102]
    with pytest.raises(NotImplementedError):
        tok.build_inputs_with_special_tokens([5])


def test_bertscore_identical_is_one_orders_similarity_and_empty_is_zero(encoder):
    refs = ["a man is playing guitar", "the stock market fell sharply", "", "a dog runs"]
    bert = BertScore(encoder, refs)
    f = bert.f1(["a man is playing guitar", "a man is playing guitar", "a cat", ""], refs)
    assert f[0] == pytest.approx(1.0, abs=1e-4)
    assert f[1] < 0.8
    assert f[2] == 0.0 and f[3] == 0.0  # empty reference / empty candidate: bert-score's NaN masking
    info = bert.describe()
    assert info["layer"] == 6 and info["idf"] is True and info["implementation"].startswith("bert-score 0.3.")
    assert info["encoder"] == str(encoder)


def test_bertscore_idf_comes_from_the_references(encoder):
    cands, refs = ["the red car is fast"], ["the blue car is quick"]
    common = BertScore(encoder, refs).f1(cands, refs)[0]
    # With "car" in every idf sentence its weight drops to zero; the remaining words differ more.
    other = BertScore(encoder, ["a car", "car car", "the car"]).f1(cands, refs)[0]
    assert common != pytest.approx(other, abs=1e-4)


# idf weights come from the references: with one reference every token's idf is log(2/2) = 0 and
# bert-score's F1 is 0, so these tests score two rows.
SRC = ["the quick brown fox jumps over the lazy dog", "the museum is closed on mondays"]
REF = ["a fast brown fox leaps over a lazy dog", "on mondays the museum does not open"]


def test_bertscore_with_a_single_reference_is_zero(encoder):
    assert BertScore(encoder, REF[:1]).f1(REF[:1], REF[:1]) == [0.0]


def test_bert_ibleu_strict(encoder):
    copy = bert_ibleu(SRC, REF, SRC, encoder=encoder)
    assert copy["bert_ibleu"] == 0.0  # copying the source has no novelty
    assert copy["self_bleu"] == pytest.approx(1.0)
    empty = bert_ibleu(["", ""], REF, SRC, encoder=encoder)
    assert empty == {"bert_ibleu": 0.0, "bertscore_f1": 0.0, "self_bleu": 0.0, "n": 2.0}
    para = bert_ibleu(REF, REF, SRC, encoder=encoder)
    b, novelty = para["bertscore_f1"], 1 - para["self_bleu"]
    assert b == pytest.approx(1.0, abs=1e-4)
    per_row = [5 / (4 / 1.0 + 1 / (1 - sacrebleu_sentence(r, s))) for r, s in zip(REF, SRC)]
    assert para["bert_ibleu"] == pytest.approx(sum(per_row) / 2, abs=1e-4)
    assert 0 < para["bert_ibleu"] < 1 and 0 < novelty < 1
    via_task = score(get_task("multipit_gen"), REF, REF, sources=SRC, encoder=encoder)
    assert via_task == pytest.approx(para, abs=1e-9)


def sacrebleu_sentence(prediction: str, source: str) -> float:
    import sacrebleu

    return sacrebleu.sentence_bleu(prediction, [source]).score / 100


def test_bert_ibleu_paper(encoder):
    same = paper_bert_ibleu(REF, REF, encoder=encoder)
    # BLEU 1 against the reference: 1 - (1 + 1e-5) < 0 turns the harmonic mean negative.
    assert same["self_bleu"] == pytest.approx(1 + 1e-5)
    assert same["bertscore_f1"] == pytest.approx(1 + 1e-5, abs=1e-4)
    assert same["bert_ibleu"] < 0
    empty = paper_bert_ibleu(["", REF[1]], REF, encoder=encoder)  # "" is scored as "no prediction"
    f1_no_prediction = BertScore(encoder, REF).f1(["no prediction"], REF[:1])[0]
    assert f1_no_prediction > 0.01
    b0, s0 = f1_no_prediction + 1e-5, 1e-5  # "no prediction" shares no 3-gram with the reference: BLEU 0
    first = 1 / ((4 / b0 + 1 / (1 - s0)) / 5)
    second = 1 / ((4 / (1 + 1e-5) + 1 / (1 - (1 + 1e-5))) / 5)
    assert empty["bert_ibleu"] == pytest.approx((first + second) / 2, abs=1e-6)


def test_task_scorer_shares_one_bertscore_pass(encoder):
    task = get_task("multipit_gen")
    sources = ["it rained all weekend in seattle", "our flight was delayed by three hours"]
    refs = ["seattle had rain the whole weekend", "the plane left three hours late"]
    preds = ["seattle saw rain all weekend", ""]
    scorer = TaskScorer(task, refs, sources=sources, encoder=encoder)
    both = scorer(preds)
    assert both["paper"] == pytest.approx(score(task, preds, refs, sources=sources, encoder=encoder, mode="paper"),
                                          abs=1e-9)
    assert both["strict"] == pytest.approx(score(task, preds, refs, sources=sources, encoder=encoder), abs=1e-9)
    assert both["paper"]["bertscore_f1"] != pytest.approx(both["strict"]["bertscore_f1"], abs=1e-3)
    assert scorer.describe()["layer"] == 6
    with pytest.raises(ConfigError, match="against the sources too"):
        TaskScorer(task, refs, encoder=encoder)(preds)
    assert TaskScorer(task, refs, encoder=encoder)(preds, modes=("paper",))["paper"] == pytest.approx(
        both["paper"], abs=1e-9)
