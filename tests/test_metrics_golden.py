"""Golden tests: dora's paper mode equals the transcription of the paper's metric code (tests/paper_metrics.py)
to 1e-9 on every key, on perturbed predictions for every task, plus one test per documented difference
between the paper's code and dora's strict mode."""

from __future__ import annotations

import json
import random
import re

import paper_metrics as paper
import pytest
from conftest import SHARED, fever_rows

from dora.errors import ConfigError
from dora.pipeline.tasks.catalog import STANCE_LABELS, WLP_LABELS, get_task
from dora.pipeline.tasks.metrics import TaskScorer, paper_ner_parse, score

TOL = 1e-9
# The transcription's keys and scale -> dora's.
KEYS = {"bert-ibleu": "bert_ibleu", "bert_score": "bertscore_f1"}
SCALE = {"nq": 100.0}


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def shared_rows(rel: str, n: int) -> list[dict]:
    path = SHARED / rel
    if not path.exists():
        pytest.skip(f"{path} is not here (shared task data)")
    return read_jsonl(path)[:n]


def transcription(task: str, predictions, references, **kw) -> dict[str, float]:
    out = paper.compute_metrics(task, list(predictions), list(references), **kw)
    return {KEYS.get(k, k): float(v) / SCALE.get(task, 1.0) for k, v in out.items()}


def assert_same(ours: dict[str, float], theirs: dict[str, float]) -> None:
    assert set(theirs) <= set(ours), f"keys missing in dora: {set(theirs) - set(ours)}"
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, abs=TOL, rel=0), (key, ours[key], value)


# --- perturbations (seeded) --------------------------------------------------------------------


def random_case(rng: random.Random, text: str) -> str:
    return "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in text)


def perturb_label(rng: random.Random, gold: str, labels, garbage) -> str:
    kind = rng.choice(["correct", "correct", "wrong", "lower", "mixed", "unparseable", "empty", "spaces"])
    if kind == "wrong":
        return rng.choice([x for x in labels if x.lower() != gold.lower()])
    if kind == "lower":
        return gold.lower()
    if kind == "mixed":
        return random_case(rng, gold)
    if kind == "unparseable":
        return rng.choice(garbage)
    if kind == "empty":
        return ""
    if kind == "spaces":
        return f"  {gold} \n"
    return gold


_PAIR = re.compile(r"(.+?)\s*(\[[^\]\s]+\])")


def perturb_wlp(rng: random.Random, gold: str) -> str:
    pairs = [(m.group(1).strip(), m.group(2)) for m in _PAIR.finditer(gold)]
    for _ in range(rng.choice([0, 1, 1, 2, 3])):
        if not pairs:
            break
        i = rng.randrange(len(pairs))
        span, label = pairs[i]
        kind = rng.choice(["drop", "relabel", "extra_word", "missing_word", "case", "unknown", "glue", "swap"])
        if kind == "drop":
            pairs.pop(i)
        elif kind == "relabel":
            pairs[i] = (span, "[" + random_case(rng, rng.choice(WLP_LABELS)) + "]")
        elif kind == "extra_word":
            pairs[i] = (rng.choice(["the ", "fresh "]) + span if rng.random() < 0.5 else span + " solution", label)
        elif kind == "missing_word" and " " in span:
            pairs[i] = (span.rsplit(" ", 1)[0], label)
        elif kind == "case":
            pairs[i] = (span, label.lower())
        elif kind == "unknown":
            pairs[i] = (span, "[Stuff]")
        elif kind == "glue":
            pairs[i] = (span + label, "")  # "word[Label]": no label for either parser
        elif kind == "swap" and len(pairs) > 1:
            j = rng.randrange(len(pairs))
            pairs[i], pairs[j] = pairs[j], pairs[i]
    text = " ".join(f"{s} {lab}".strip() for s, lab in pairs)
    kind = rng.choice(["plain"] * 6 + ["empty", "spaces", "truncated", "leading_label", "garbage"])
    if kind == "empty":
        return ""
    if kind == "spaces":
        return "  " + text.replace(" ", "   ") + " "
    if kind == "truncated":  # as a generation cut at max length
        words = text.split()
        return " ".join(words[: rng.randrange(len(words) + 1)])
    if kind == "leading_label":  # a label word first: the paper's slice words[0:-1]
        return "[Action] " + text
    if kind == "garbage":
        return "no entities here"
    return text


def perturb_answer(rng: random.Random, gold: str) -> str:
    words = gold.split()
    kind = rng.choice(["correct", "lower", "article", "punct", "drop_word", "extra_word", "replace", "empty", "dot",
                       "spaces"])
    if kind == "lower":
        return gold.lower()
    if kind == "article":
        return "The " + gold
    if kind == "punct":
        return f'"{gold}!"'
    if kind == "drop_word" and len(words) > 1:
        words.pop(rng.randrange(len(words)))
        return " ".join(words)
    if kind == "extra_word":
        return gold + " " + rng.choice(["river", "in 1990", "and others"])
    if kind == "replace":
        words[rng.randrange(len(words))] = "something"
        return " ".join(words)
    if kind == "empty":
        return ""
    if kind == "dot":
        return "."
    if kind == "spaces":
        return "  " + "  ".join(words) + " "
    return gold


# --- golden: paper mode == the transcription, per task ------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_golden_fever_demo_data(seed):
    golds = [r["target"] for r in fever_rows()[:300]]
    rng = random.Random(seed)
    preds = [perturb_label(rng, g, ["SUPPORTS", "REFUTES"], ["NOT ENOUGH INFO", "maybe", "SUPPORT", "REFUTES.", "yes"])
             for g in golds]
    assert_same(score(get_task("fever"), preds, golds, mode="paper"), transcription("fever", preds, golds))


def test_golden_fever_shared_data():
    golds = [r["target"] for r in shared_rows("fever/fever_dev_all.json", 1000)]
    rng = random.Random(7)
    preds = [perturb_label(rng, g, ["SUPPORTS", "REFUTES"], ["NOT ENOUGH INFO", "??"]) for g in golds]
    assert_same(score(get_task("fever"), preds, golds, mode="paper"), transcription("fever", preds, golds))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_golden_multipit_id_synthetic(seed):
    rng = random.Random(seed)
    golds = [rng.choice(["YES", "NO"]) for _ in range(200)]
    preds = [perturb_label(rng, g, ["YES", "NO"], ["Y", "maybe", "NO.", "true"]) for g in golds]
    assert_same(score(get_task("multipit_id"), preds, golds, mode="paper"), transcription("multipit_id", preds, golds))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_golden_stanceosaurus_synthetic(seed):
    rng = random.Random(seed)
    # Querying is rare, as in the real data; some seeds have none.
    golds = rng.choices(STANCE_LABELS, weights=[40, 20, 20, 18, 2 if seed % 2 else 0], k=150)
    preds = [perturb_label(rng, g, STANCE_LABELS, ["Support", "???", "Irrelevant.", "neutral"]) for g in golds]
    assert_same(score(get_task("stanceosaurus"), preds, golds, mode="paper"),
                transcription("stanceosaurus", preds, golds))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_golden_wlp_shared_data(seed):
    golds = [r["target"] for r in shared_rows("wlp/wlp_test_all.json", 400)]
    rng = random.Random(seed)
    preds = [perturb_wlp(rng, g) for g in golds]
    assert_same(score(get_task("wlp"), preds, golds, mode="paper"), transcription("wlp", preds, golds))


def test_golden_wlp_synthetic_quirks():
    golds = ["Add [Action] 50 mL [Amount] sterile water [Reagent]", "Spin [Action] tube [Location]",
             "[Action] nothing before", "Adjust [Action] pH [Measure-Type] 7.4 [pH] with NaOH [Reagent]"]
    preds = ["add [ACTION] 50 mL [amount] water [Reagent]", "Spin [Action] tube[Location]",
             "[Action] nothing before", "Adjust [Action] pH [MEASURE-TYPE] 7.4 [PH] with NaOH [Misc]"]
    assert_same(score(get_task("wlp"), preds, golds, mode="paper"), transcription("wlp", preds, golds))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_golden_nq_shared_data(seed):
    golds = [r["target"] for r in shared_rows("nq/nq_dev_all.json", 500)]
    golds += ["The", "a", "The Beatles"]  # answers that normalise to nothing
    rng = random.Random(seed)
    preds = [perturb_answer(rng, g) for g in golds]
    assert_same(score(get_task("nq"), preds, golds, mode="paper"), transcription("nq", preds, golds))


# MultiPIT_gen: (source, reference paraphrase), written for these tests.
PARAPHRASES = [
    ("the quick brown fox jumps over the lazy dog", "a fast brown fox leaps over a lazy dog"),
    ("the meeting has been moved to next tuesday", "the meeting was rescheduled for next tuesday"),
    ("i can't believe the game went into overtime again", "unbelievable that the match went to overtime once more"),
    ("she bought a new phone because the old one broke", "her old phone broke so she got a new one"),
    ("the museum is closed on mondays", "on mondays the museum does not open"),
    ("prices at the pump keep going up", "gas prices continue to rise"),
    ("he finished the marathon in under four hours", "he ran the marathon in less than four hours"),
    ("the new album drops at midnight", "the album will be released at midnight"),
    ("our flight was delayed by three hours", "the plane left three hours late"),
    ("this is the best pizza in town", "nowhere in town has better pizza"),
    ("the team signed a new goalkeeper today", "a new goalie joined the team today"),
    ("it rained all weekend in seattle", "seattle had rain the whole weekend"),
]


def paraphrase_predictions(rng: random.Random) -> tuple[list[str], list[str], list[str]]:
    sources, refs, preds = [], [], []
    for source, ref in PARAPHRASES:
        for kind in rng.sample(["ref", "source", "empty", "blank", "drop", "upper", "short", "shuffle", "punct"], 3):
            words = ref.split()
            pred = {
                "ref": ref, "source": source, "empty": "", "blank": "   ", "upper": ref.upper(), "short": "ok",
                "drop": " ".join(w for i, w in enumerate(words) if i != len(words) // 2),
                "shuffle": " ".join(rng.sample(words, len(words))), "punct": ref + " !!",
            }[kind]
            sources.append(source)
            refs.append(ref)
            preds.append(pred)
    return sources, refs, preds


def test_golden_multipit_gen_synthetic(encoder):
    sources, refs, preds = paraphrase_predictions(random.Random(0))
    ours = score(get_task("multipit_gen"), preds, refs, sources=sources, encoder=encoder, mode="paper")
    assert_same(ours, transcription("multipit_gen", preds, refs, model_type=str(encoder), num_layers=6))


# --- one test per difference between the paper's code and dora's strict mode --------------------


def test_row_fever_unparseable_prediction_is_refutes_in_paper():
    preds, golds = ["supports", "Maybe", "SUPPORTS"], ["SUPPORTS", "REFUTES", "SUPPORTS"]
    out = TaskScorer(get_task("fever"), golds)(preds)
    assert out["paper"]["accuracy"] == 1.0 == transcription("fever", preds, golds)["accuracy"]
    assert out["strict"]["accuracy"] == pytest.approx(2 / 3)


def test_row_stance_unparseable_prediction():
    golds = ["Irrelevant", "Supporting", "Refuting", "Discussing", "Querying", "Supporting"]
    preds = ["Irrelevant", "Supporting", "Refuting", "Discussing", "Querying", "???"]
    out = TaskScorer(get_task("stanceosaurus"), golds)(preds)
    # paper: "???" -> Irrelevant (id 0): Irrelevant P 1/2 R 1, Supporting P 1 R 1/2, the rest 1.
    assert out["paper"]["micro_f1"] == pytest.approx(5 / 6)
    assert out["paper"]["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 3) / 5)
    assert_same(out["paper"], transcription("stanceosaurus", preds, golds))
    # strict: a false negative of Supporting and a false positive of nothing.
    assert out["strict"]["micro_precision"] == 1.0
    assert out["strict"]["micro_recall"] == pytest.approx(5 / 6)
    assert out["strict"]["micro_f1"] == pytest.approx(10 / 11)
    assert out["strict"]["macro_f1"] == pytest.approx((4 + 2 / 3) / 5)


def test_row_stance_dev_set_without_querying():
    golds = ["Irrelevant", "Supporting", "Refuting", "Discussing", "Irrelevant"]
    out = TaskScorer(get_task("stanceosaurus"), golds)(list(golds))
    assert out["paper"]["macro_f1"] == 1.0 == transcription("stanceosaurus", golds, golds)["macro_f1"]
    assert out["strict"]["macro_f1"] == 1.0  # macro over the labels present, not all five


def test_row_wlp_parser_fallback_and_case():
    golds = ["Add [Action] 50 mL [Amount] sterile water [Reagent]",
             "Incubate [Action] room temperature [Temperature] 5 min [Time]"]
    preds = ["Add [action] 50 mL [AMOUNT] sterile water [reagent]", "Incubate [Action] room temp [Temperature]"]
    # The paper's parser drops each span's last word: one-word spans become "" (and overwrite each other).
    assert paper_ner_parse(golds[1]) == {"": "[Action]", "room": "[Temperature]", "5": "[Time]"}
    out = TaskScorer(get_task("wlp"), golds)(preds)
    # paper: "room temp" matches "room temperature" (last words dropped); "5 min" is missing -> AMOUNT.
    assert_same(out["paper"], transcription("wlp", preds, golds))
    assert out["paper"]["micro_f1"] == pytest.approx(5 / 6)
    assert out["paper"]["macro_precision"] == pytest.approx((0.5 + 1 + 0 + 1 + 1) / 5)
    assert out["paper"]["macro_f1"] == pytest.approx((2 / 3 + 1 + 0 + 1 + 1) / 5)
    # strict: whole spans, labels case-insensitive; "room temperature" and "5 min" are false negatives only.
    assert out["strict"]["micro_precision"] == 1.0
    assert out["strict"]["micro_recall"] == pytest.approx(4 / 6)
    assert out["strict"]["micro_f1"] == pytest.approx(0.8)
    assert out["strict"]["macro_f1"] == pytest.approx(3 / 5)


def test_row_multipit_gen_paper_vs_strict(encoder):
    import sacrebleu

    sources = ["the museum is closed on mondays", "prices at the pump keep going up", "it rained all weekend"]
    refs = ["on mondays the museum does not open", "gas prices continue to rise", "it rained the whole weekend"]
    preds = ["the museum does not open on mondays", "", "it rained all weekend"]  # good, empty, copy of the source
    out = TaskScorer(get_task("multipit_gen"), refs, sources=sources, encoder=encoder)(preds)
    # paper: BERTScore with idf, unsmoothed BLEU against the REFERENCE, "no prediction", +1e-5 on both.
    assert_same(out["paper"], transcription("multipit_gen", preds, refs, model_type=str(encoder), num_layers=6))
    candidates = [p or "no prediction" for p in preds]
    f1 = paper.bertscore_compute(candidates, refs, model_type=str(encoder), num_layers=6)["f1"]
    paper_bleu = [paper.bleu_compute([p], [r])["bleu"] for p, r in zip(candidates, refs)]
    assert out["paper"]["self_bleu"] == pytest.approx(sum(paper_bleu) / 3 + 1e-5, abs=TOL)
    # strict: the same BERTScore (empty -> 0), smoothed sentence BLEU against the SOURCE, no +1e-5,
    # empty output and a copy of the source score 0.
    strict_bleu = [sacrebleu.sentence_bleu(p, [s]).score / 100 for p, s in zip(preds, sources)]
    assert strict_bleu[2] == pytest.approx(1.0)
    assert out["strict"]["self_bleu"] == pytest.approx(sum(strict_bleu) / 3, abs=TOL)
    assert out["strict"]["bertscore_f1"] == pytest.approx((f1[0] + 0 + f1[2]) / 3, abs=1e-7)
    first = 5 / (4 / f1[0] + 1 / (1 - strict_bleu[0]))
    assert out["strict"]["bert_ibleu"] == pytest.approx(first / 3, abs=1e-7)


def test_row_nq_both_sides_empty():
    preds, golds = ["", "An"], ["The", "the ."]
    out = TaskScorer(get_task("nq"), golds)(preds)
    # SQuAD v1.1: no shared token -> F1 0, though the normalised strings are equal (EM 1).
    assert out["paper"] == {"exact_match": 1.0, "f1": 0.0, "n": 2.0}
    assert_same(out["paper"], transcription("nq", preds, golds))
    assert out["strict"] == {"exact_match": 1.0, "f1": 1.0, "n": 2.0}  # SQuAD v2's rule


def test_row_nq_alternative_answers_strict_only():
    preds, golds = ["Paris"], ["Lyon|||Paris"]
    out = TaskScorer(get_task("nq"), golds)(preds)
    assert out["strict"]["exact_match"] == 1.0
    assert out["paper"]["exact_match"] == 0.0 == transcription("nq", preds, golds)["exact_match"]


def test_reference_outside_the_label_set_is_an_error_in_both_modes():
    for mode in ("paper", "strict"):
        with pytest.raises(ConfigError, match="'NOT ENOUGH INFO'.*fix the target column"):
            score(get_task("fever"), ["SUPPORTS"], ["NOT ENOUGH INFO"], mode=mode)
    with pytest.raises(KeyError):  # the paper's own code fails here too
        paper.postprocess_text("fever", ["SUPPORTS"], ["NOT ENOUGH INFO"])
