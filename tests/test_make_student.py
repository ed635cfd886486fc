"""``dora make-student``: students cut from tiny T5 and Llama teachers built from configs. The cut
model loads, has the asked layers, every kept layer equals the teacher layer it copies, the
tokenizer is the teacher's (so same-vocabulary top-k KD applies), and bad requests are one line."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from dora.cache import tokenizer_fingerprint
from dora.cli import app
from dora.pipeline.models.cut import spaced
from dora.pipeline.models.scratch import save_model_dir, tiny_llama, tiny_t5, train_tokenizer


@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    """A 4-layer T5 and a 5-layer Llama teacher."""
    from conftest import fever_rows

    root = tmp_path_factory.mktemp("deep")
    texts = [r["source"] for r in fever_rows()[:200]]
    t5_tok, llama_tok = train_tokenizer(texts, vocab_size=300), train_tokenizer(texts, vocab_size=300, kind="llama")
    save_model_dir(tiny_t5(t5_tok, d_model=32, layers=4, heads=2), t5_tok, root / "t5")
    save_model_dir(tiny_llama(llama_tok, hidden=32, layers=5, heads=2), llama_tok, root / "llama")
    return root


def _run(*args):
    return CliRunner().invoke(app, ["make-student", *map(str, args)])


def _state(path):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    auto = AutoModelForSeq2SeqLM if (path / "config.json").read_text().count('"t5"') else AutoModelForCausalLM
    model = auto.from_pretrained(path)
    return model, model.state_dict()


def test_spaced_keeps_first_and_last():
    assert spaced(4, 2) == [0, 3] and spaced(5, 3) == [0, 2, 4] and spaced(4, 4) == [0, 1, 2, 3]


def test_t5_cut_keeps_encoder_and_decoder_layers_separately(deep, tmp_path):
    out = tmp_path / "cut"
    result = _run("--from", deep / "t5", "--encoder-layers", 2, "--decoder-layers", 1, "--out", out)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "make_student.json").read_text())
    assert record["kept"] == {"encoder": [0, 3], "decoder": [0]}
    teacher, t = _state(deep / "t5")
    student, s = _state(out)
    assert student.config.num_layers == 2 and student.config.num_decoder_layers == 1
    for name, value in s.items():  # every weight is the teacher's: the same name or the kept layer's
        origin = name.replace("encoder.block.1.", "encoder.block.3.")
        assert torch.equal(value, t[origin]), name
    # Layer 0 carries T5's relative position bias: kept, and the cut model runs.
    assert "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight" in s
    ids = torch.tensor([[5, 6, 7, 1]])
    assert student(input_ids=ids, labels=ids).logits.shape[-1] == teacher.config.vocab_size


def test_llama_cut_and_same_tokenizer(deep, tmp_path):
    from transformers import AutoTokenizer

    out = tmp_path / "cut"
    assert _run("--from", deep / "llama", "--layers", 3, "--out", out).exit_code == 0
    _, t = _state(deep / "llama")
    student, s = _state(out)
    assert student.config.num_hidden_layers == 3
    kept = json.loads((out / "make_student.json").read_text())["kept"]["layers"]
    assert kept == [0, 2, 4]
    for name, value in s.items():
        if ".layers." in name:
            i = int(name.split(".layers.")[1].split(".")[0])
            origin = name.replace(f".layers.{i}.", f".layers.{kept[i]}.")
        else:
            origin = name
        assert torch.equal(value, t[origin]), name
    assert tokenizer_fingerprint(AutoTokenizer.from_pretrained(out)) == \
        tokenizer_fingerprint(AutoTokenizer.from_pretrained(deep / "llama"))


@pytest.mark.parametrize(("args", "message"), [
    (["--layers", 9], "--layers must be from 1 to 5"),
    (["--layers", 0], "--layers must be from 1 to 5"),
    (["--encoder-layers", 2], "decoder-only: give --layers N"),
    ([], "give --layers N"),
])
def test_bad_requests_are_one_line_and_write_nothing(deep, tmp_path, args, message):
    out = tmp_path / "cut"
    result = _run("--from", deep / "llama", "--out", out, *args)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not out.exists() and not list(tmp_path.iterdir())


def test_never_writes_into_an_existing_directory(deep, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    result = _run("--from", deep / "llama", "--layers", 2, "--out", out)
    assert result.exit_code == 2 and "exists and is not an empty directory" in result.output
    assert (out / "notes.txt").read_text() == "keep me" and len(list(out.iterdir())) == 1


def test_an_architecture_with_other_layer_names_is_refused(tmp_path):
    """GPT-2 keeps its layers under transformer.h.<i>: copying by name would silently keep the first
    N layers, not N spaced ones, so it is refused."""
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=3, n_head=2)).save_pretrained(tmp_path / "gpt2")
    result = _run("--from", tmp_path / "gpt2", "--layers", 2, "--out", tmp_path / "cut")
    assert result.exit_code == 2 and "not supported by make-student" in result.output
    assert not (tmp_path / "cut").exists()


def test_a_cut_student_distills_with_the_same_vocabulary_loss(t5_dir, cache_dir, tmp_path):
    """The cut student shares the teacher's tokenizer, so train-student picks top-k KD by itself."""
    cut = tmp_path / "cut"
    assert _run("--from", t5_dir, "--layers", 1, "--out", cut).exit_code == 0
    result = CliRunner().invoke(app, ["train-student", "--task", "fever", "--student", str(cut), "--cache",
                                      str(cache_dir), "--out", str(tmp_path / "run"), "--max-steps", "2",
                                      "--max-source-length", "32", "--save-every", "100"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "run.json").read_text())["kd_loss"] == "topk"


def test_a_failure_while_saving_leaves_nothing(deep, tmp_path, monkeypatch):
    import errno
    import types

    import dora.pipeline.stages.make_student as stage

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "cut"))

    monkeypatch.setattr(stage, "json", types.SimpleNamespace(dumps=full))  # the record is written last
    result = _run("--from", deep / "llama", "--layers", 2, "--out", tmp_path / "cut")
    assert result.exit_code == 2 and "No space left" in result.output and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_zero_layers_of_one_t5_stack_is_refused_not_replaced(deep, tmp_path):
    result = _run("--from", deep / "t5", "--layers", 2, "--encoder-layers", 0, "--out", tmp_path / "cut")
    assert result.exit_code == 2 and "--encoder-layers must be from 1 to 4" in result.output


def test_a_symlinked_out_is_refused(deep, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    result = _run("--from", deep / "llama", "--layers", 2, "--out", tmp_path / "link")
    assert result.exit_code == 2 and "symbolic link" in result.output
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_a_student_weight_without_a_teacher_weight_is_an_error(deep):
    from transformers import AutoModelForCausalLM

    from dora.errors import ModelError
    from dora.pipeline.models.cut import cut

    teacher = AutoModelForCausalLM.from_pretrained(deep / "llama")
    full = teacher.state_dict
    teacher.state_dict = lambda: {k: v for k, v in full().items() if k != "model.norm.weight"}
    with pytest.raises(ModelError, match=r"model\.norm\.weight has no teacher weight"):
        cut(teacher, {"layers": 2})


def test_per_layer_attention_kinds_follow_their_layers(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from dora.pipeline.models.cut import cut

    kinds = ["full_attention", "sliding_attention", "full_attention", "sliding_attention"]
    teacher = Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=4,
                                           num_attention_heads=2, num_key_value_heads=2, layer_types=kinds,
                                           use_sliding_window=True, sliding_window=8))
    student, chosen = cut(teacher, {"layers": 2})
    assert chosen == {"layers": [0, 3]}
    assert student.config.layer_types == ["full_attention", "sliding_attention"]
