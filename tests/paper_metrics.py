"""TEST-ONLY transcription of the metric code of the paper's run_t5.py (jm-kang/Distill-or-Annotate).

The golden tests score the same predictions with this file and with ``dora.pipeline.tasks.metrics`` in
paper mode and demand the same numbers. It follows the original function by function
(``ner_parse``, ``ner_postprocess``, ``postprocess_text``, ``compute_metrics``), and stands in for
the HF ``evaluate`` metrics the original loads from the hub:

- ``accuracy``, ``precision``, ``recall``, ``f1``: scikit-learn, called as HF evaluate calls it;
- ``squad``: the SQuAD v1.1 evaluation script (``compute_score``), with HF's input conversion;
- ``bleu``: tensorflow/nmt ``compute_bleu`` over HF's copy of sacrebleu's 13a tokenizer;
- ``bertscore``: ``bert_score.BERTScorer`` as HF evaluate builds it.

Deliberately independent of dora: it never imports ``dora.pipeline.tasks.metrics``. Differences from a
run of the original, none of which changes a number: metrics are functions, not hub downloads;
``compute_metrics`` takes decoded text (the original decodes token ids first); bert-score builds its
idf weights without a process pool; the scorer is cached per model, its idf per reference set.
"""

from __future__ import annotations

import collections
import math
import re
import string
import sys
import warnings
from functools import lru_cache

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

# --- run_t5.py: ner_parse, ner_postprocess, postprocess_text -------------------------------------

WLP_LABEL_SET = {"AMOUNT", "REAGENT", "DEVICE", "TIME", "SPEED", "ACTION", "MENTION", "LOCATION", "NUMERICAL",
                 "METHOD", "TEMPERATURE", "MODIFIER", "CONCENTRATION", "SIZE", "GENERIC-MEASURE", "SEAL",
                 "MEASURE-TYPE", "MISC", "PH", "UNIT"}

LABEL_TO_ID = {
    "fever": {"SUPPORTS": 1, "REFUTES": 0},
    "multipit_id": {"YES": 1, "NO": 0},
    "stanceosaurus": {"IRRELEVANT": 0, "SUPPORTING": 1, "REFUTING": 2, "DISCUSSING": 3, "QUERYING": 4},
    "wlp": {"AMOUNT": 0, "REAGENT": 1, "DEVICE": 2, "TIME": 3, "SPEED": 4, "ACTION": 5, "MENTION": 6, "LOCATION": 7,
            "NUMERICAL": 8, "METHOD": 9, "TEMPERATURE": 10, "MODIFIER": 11, "CONCENTRATION": 12, "SIZE": 13,
            "GENERIC-MEASURE": 14, "SEAL": 15, "MEASURE-TYPE": 16, "MISC": 17, "PH": 18, "UNIT": 19},
}


def ner_parse(sent):
    # Entity [Label] Entity [Label]
    label_set = WLP_LABEL_SET
    prev_label_idx = -1
    output = {}
    for i, word in enumerate(sent.split()):
        if "[" in word and "]" in word and word[1:len(word) - 1].upper() in label_set:
            entity = " ".join(sent.split()[prev_label_idx + 1:i - 1])
            label = word
            output[entity] = label
            prev_label_idx = i
    return output


def ner_postprocess(preds, labels):
    ner_preds = []
    ner_labels = []
    for pred, label in zip(preds, labels):
        pred = ner_parse(pred)
        label = ner_parse(label)
        for e, l in label.items():
            if e not in pred:
                ner_preds.append("AMOUNT")
            else:
                ner_preds.append(pred[e].replace("[", "").replace("]", ""))
            ner_labels.append(l.replace("[", "").replace("]", ""))
    return ner_preds, ner_labels


def postprocess_text(task, preds, labels):
    preds = [pred.strip() for pred in preds]
    labels = [label.strip() for label in labels]

    if task in ("fever", "multipit_id", "stanceosaurus"):
        label_to_id = LABEL_TO_ID[task]
    elif task == "wlp":
        label_to_id = LABEL_TO_ID[task]
        preds, labels = ner_postprocess(preds, labels)
    else:  # For generation tasks, just return
        return preds, labels

    for i, pred in enumerate(preds):
        if pred.upper() in label_to_id:
            preds[i] = label_to_id[pred.upper()]
        else:
            preds[i] = 0
    labels = [label_to_id[label.upper()] for label in labels]

    return preds, labels


# --- HF evaluate's squad: the SQuAD v1.1 script ----------------------------------------------------


def normalize_answer(s):
    """Lower text and remove punctuation, articles and extra whitespace."""

    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def squad_f1_score(prediction, ground_truth):
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    common = collections.Counter(prediction_tokens) & collections.Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    f1 = (2 * precision * recall) / (precision + recall)
    return f1


def exact_match_score(prediction, ground_truth):
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def metric_max_over_ground_truths(metric_fn, prediction, ground_truths):
    scores_for_ground_truths = []
    for ground_truth in ground_truths:
        score = metric_fn(prediction, ground_truth)
        scores_for_ground_truths.append(score)
    return max(scores_for_ground_truths)


def compute_score(dataset, predictions):
    f1 = exact_match = total = 0
    for article in dataset:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                total += 1
                if qa["id"] not in predictions:
                    print("Unanswered question " + qa["id"] + " will receive score 0.", file=sys.stderr)
                    continue
                ground_truths = [x["text"] for x in qa["answers"]]
                prediction = predictions[qa["id"]]
                exact_match += metric_max_over_ground_truths(exact_match_score, prediction, ground_truths)
                f1 += metric_max_over_ground_truths(squad_f1_score, prediction, ground_truths)

    exact_match = 100.0 * exact_match / total
    f1 = 100.0 * f1 / total

    return {"exact_match": exact_match, "f1": f1}


def squad_compute(predictions, references):
    """HF evaluate's ``squad._compute``."""
    pred_dict = {prediction["id"]: prediction["prediction_text"] for prediction in predictions}
    dataset = [{"paragraphs": [{"qas": [
        {"answers": [{"text": answer_text} for answer_text in ref["answers"]["text"]], "id": ref["id"]}
        for ref in references
    ]}]}]
    return compute_score(dataset=dataset, predictions=pred_dict)


# --- HF evaluate's bleu: 13a tokenizer + tensorflow/nmt compute_bleu --------------------------------


class TokenizerRegexp:
    def __init__(self):
        self._re = [
            # language-dependent part (assuming Western languages)
            (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),
            # tokenize period and comma unless preceded by a digit
            (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),
            # tokenize period and comma unless followed by a digit
            (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),
            # tokenize dash when preceded by a digit
            (re.compile(r"([0-9])(-)"), r"\1 \2 "),
        ]

    def __call__(self, line):
        for (_re, repl) in self._re:
            line = _re.sub(repl, line)
        return line.split()


class Tokenizer13a:
    def __init__(self):
        self._post_tokenizer = TokenizerRegexp()

    def __call__(self, line):
        line = line.replace("<skipped>", "")
        line = line.replace("-\n", "")
        line = line.replace("\n", " ")

        if "&" in line:
            line = line.replace("&quot;", '"')
            line = line.replace("&amp;", "&")
            line = line.replace("&lt;", "<")
            line = line.replace("&gt;", ">")

        return self._post_tokenizer(f" {line} ")


def _get_ngrams(segment, max_order):
    ngram_counts = collections.Counter()
    for order in range(1, max_order + 1):
        for i in range(len(segment) - order + 1):
            ngram = tuple(segment[i:i + order])
            ngram_counts[ngram] += 1
    return ngram_counts


def compute_bleu(reference_corpus, translation_corpus, max_order=4, smooth=False):
    matches_by_order = [0] * max_order
    possible_matches_by_order = [0] * max_order
    reference_length = 0
    translation_length = 0
    for (references, translation) in zip(reference_corpus, translation_corpus):
        reference_length += min(len(r) for r in references)
        translation_length += len(translation)

        merged_ref_ngram_counts = collections.Counter()
        for reference in references:
            merged_ref_ngram_counts |= _get_ngrams(reference, max_order)
        translation_ngram_counts = _get_ngrams(translation, max_order)
        overlap = translation_ngram_counts & merged_ref_ngram_counts
        for ngram in overlap:
            matches_by_order[len(ngram) - 1] += overlap[ngram]
        for order in range(1, max_order + 1):
            possible_matches = len(translation) - order + 1
            if possible_matches > 0:
                possible_matches_by_order[order - 1] += possible_matches

    precisions = [0] * max_order
    for i in range(max_order):
        if smooth:
            precisions[i] = ((matches_by_order[i] + 1.) / (possible_matches_by_order[i] + 1.))
        else:
            if possible_matches_by_order[i] > 0:
                precisions[i] = (float(matches_by_order[i]) / possible_matches_by_order[i])
            else:
                precisions[i] = 0.0

    if min(precisions) > 0:
        p_log_sum = sum((1. / max_order) * math.log(p) for p in precisions)
        geo_mean = math.exp(p_log_sum)
    else:
        geo_mean = 0

    if reference_length == 0 or translation_length == 0:
        ratio = 0.0
        bp = 0.0
    else:
        ratio = float(translation_length) / reference_length
        bp = 1.0 if ratio > 1.0 else math.exp(1 - 1.0 / ratio)

    bleu = geo_mean * bp

    return (bleu, precisions, bp, ratio, translation_length, reference_length)


def bleu_compute(predictions, references, tokenizer=None, max_order=4, smooth=False):
    """HF evaluate's ``bleu._compute``."""
    tokenizer = tokenizer or Tokenizer13a()
    if isinstance(references[0], str):
        references = [[ref] for ref in references]
    references = [[tokenizer(r) for r in ref] for ref in references]
    predictions = [tokenizer(p) for p in predictions]
    score = compute_bleu(reference_corpus=references, translation_corpus=predictions, max_order=max_order,
                         smooth=smooth)
    (bleu, precisions, bp, ratio, translation_length, reference_length) = score
    return {"bleu": bleu, "precisions": precisions, "brevity_penalty": bp, "length_ratio": ratio,
            "translation_length": translation_length, "reference_length": reference_length}


# --- HF evaluate's bertscore: bert_score.BERTScorer -------------------------------------------------


@lru_cache(maxsize=2)
def _scorer(model_type, num_layers):
    import bert_score

    scorer = bert_score.BERTScorer(model_type=model_type, num_layers=num_layers, batch_size=64, nthreads=0,
                                   all_layers=False, idf=True, idf_sents=None, device=None, lang=None,
                                   rescale_with_baseline=False, baseline_path=None, use_fast_tokenizer=False)
    tokenizer = scorer._tokenizer
    # transformers 5 dropped build_inputs_with_special_tokens, which bert-score calls for "": frame the
    # empty input as transformers 4 did. Only where the method is missing.
    if not hasattr(tokenizer, "build_inputs_with_special_tokens"):
        empty = list(tokenizer("", add_special_tokens=True)["input_ids"])

        def build_inputs_with_special_tokens(token_ids_0, token_ids_1=None):
            assert not token_ids_0 and token_ids_1 is None
            return list(empty)

        tokenizer.build_inputs_with_special_tokens = build_inputs_with_special_tokens
    return scorer


def bertscore_compute(predictions, references, model_type, num_layers, idf=True, batch_size=64):
    """HF evaluate's ``bertscore._compute`` with ``idf=True`` (the paper's call); the model is cached,
    the idf weights are the references' of this call (HF's cache would keep the first call's)."""
    if isinstance(references[0], str):
        references = [[ref] for ref in references]
    idf_sents = [r for ref in references for r in ref] if idf else None
    scorer = _scorer(model_type, num_layers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Overwriting the previous importance weights."
        scorer.compute_idf(idf_sents)
    (P, R, F) = scorer.score(cands=predictions, refs=references, verbose=False, batch_size=batch_size)
    return {"precision": P.tolist(), "recall": R.tolist(), "f1": F.tolist()}


# --- run_t5.py: compute_metrics ---------------------------------------------------------------------


def compute_metrics(task, decoded_preds, decoded_labels, *, model_type=None, num_layers=None):
    """The original's ``compute_metrics`` after decoding. ``task`` is dora's name (``multipit_gen`` is the
    original's ``multipit``); ``model_type``/``num_layers`` replace microsoft/deberta-xlarge-mnli."""
    # Some simple post-processing
    decoded_preds, decoded_labels = postprocess_text(task, decoded_preds, decoded_labels)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn's UndefinedMetricWarning (zero_division)
        if task == "fever" or task == "multipit_id":
            result = {"accuracy": float(accuracy_score(decoded_labels, decoded_preds))}
        elif task == "stanceosaurus" or task == "wlp":
            def prf(fn, average):
                return float(fn(decoded_labels, decoded_preds, average=average))

            result = {"micro_recall": prf(recall_score, "micro"), "micro_precision": prf(precision_score, "micro"),
                      "micro_f1": prf(f1_score, "micro"), "macro_recall": prf(recall_score, "macro"),
                      "macro_precision": prf(precision_score, "macro"), "macro_f1": prf(f1_score, "macro")}
        elif task == "multipit_gen":
            # TO DO: References? Sources?  (the original's comment: it scores against the references)
            decoded_preds = ["no prediction" if p == "" else p for p in decoded_preds]
            bert_score = bertscore_compute(predictions=decoded_preds, references=decoded_labels,
                                           model_type=model_type, num_layers=num_layers, idf=True)
            self_bleu = []
            for p, r in zip(decoded_preds, decoded_labels):
                self_bleu.append(bleu_compute(predictions=[p], references=[r])["bleu"])
            bert_score = np.asarray(bert_score["f1"]) + 1e-5
            self_bleu = np.asarray(self_bleu) + 1e-5

            Beta = 4.0
            with np.errstate(divide="ignore"):
                bert_ibleu = ((Beta * (bert_score ** (-1)) + (1 - self_bleu) ** (-1)) / (Beta + 1)) ** (-1)

            result = {"bert-ibleu": bert_ibleu.mean(), "self_bleu": self_bleu.mean(), "bert_score": bert_score.mean()}
            return {k: float(v) for k, v in result.items()}
        elif task == "nq":
            predictions = [{"prediction_text": p, "id": str(i)} for i, p in enumerate(decoded_preds)]
            references = [{"answers": {"answer_start": [-1], "text": [l]}, "id": str(i)}
                          for i, l in enumerate(decoded_labels)]
            result = squad_compute(predictions=predictions, references=references)
            return result
        else:
            raise ValueError("Task is not valid.")

    return result
