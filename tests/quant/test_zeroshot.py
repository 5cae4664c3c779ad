"""`llm1bit eval --tasks`: zero-shot accuracy through lm-evaluation-harness (the `eval` extra).

The local task tinystories_lastword reads ../shared/data/tinystories/valid-head.txt in place; everything
runs offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from llm1bit.cli import main

lm_eval = pytest.importorskip("lm_eval")

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
STORIES = str(DATA / "models" / "stories260K")
TEXT = DATA / "tinystories" / "valid-head.txt"


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def test_missing_extra_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """`import lm_eval` made to fail in-process."""
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    result = invoke("eval", "--model", STORIES, "--tasks", "tinystories_lastword", "--limit", "8")
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "pip install 'llm1bit[eval]'" in lines[0], result.output
    assert "Traceback" not in result.output


def test_lastword_docs_from_shared_text() -> None:
    from llm1bit.quant.eval.zeroshot import lastword_docs

    docs = lastword_docs(TEXT.read_text())
    assert len(docs) > 8
    first = docs[0]
    assert first["target"] == " clean" and first["context"].endswith("so bright and")
    for doc in docs:  # the context is the story up to the word; the word is its next word
        assert re.fullmatch(r" [A-Za-z]+(?:['-][A-Za-z]+)*", doc["target"]), doc
        assert not doc["context"].endswith((" ", "\n")) and doc["context"].strip()


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("LLM1BIT_DATA", str(DATA))


@pytest.fixture(scope="module")
def rtn4(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zeroshot") / "rtn4"
    result = invoke("quantize", "--model", STORIES, "--method", "rtn", "--wbits", "4", "-o", str(out))
    assert result.exit_code == 0, result.output
    return out


def direct_lastword(model, tokenizer, docs: list[dict]) -> tuple[int, float]:
    """(greedy hits, perplexity) computed straight from the model: the continuation's tokens are those of
    context + target after the context's own tokens; a hit when every one of them is the argmax."""
    import torch

    hits, logliks = 0, []
    with torch.inference_mode():
        for doc in docs:
            whole = tokenizer(doc["context"] + doc["target"]).input_ids
            n_ctx = len(tokenizer(doc["context"]).input_ids)
            logits = model(input_ids=torch.tensor([whole])).logits[0].float()
            pred = logits[n_ctx - 1 : len(whole) - 1]
            cont = torch.tensor(whole[n_ctx:])
            hits += int(torch.equal(pred.argmax(-1), cont))
            logliks.append(torch.log_softmax(pred, -1).gather(1, cont[:, None]).sum().item())
    return hits, math.exp(-sum(logliks) / len(logliks))


@pytest.mark.parametrize("kind", ["original", "rtn4"])
def test_lastword_matches_direct_greedy(kind: str, request: pytest.FixtureRequest) -> None:
    from llm1bit.quant.eval.zeroshot import lastword_docs
    from llm1bit.quant.hf.checkpoint import load_quantized
    from llm1bit.quant.hf.loading import load_model

    source = STORIES if kind == "original" else str(request.getfixturevalue("rtn4"))
    batch = ["--batch-size", "8"] if kind == "rtn4" else []  # one padded batch, and one request a forward
    result = invoke(
        "eval", "--model", source, "--tasks", "tinystories_lastword", "--limit", "8", *batch, "--json"
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["lm_eval_version"] == lm_eval.__version__ and out["limit"] == 8 and out["seed"]
    assert out["model_kind"] == ("original" if kind == "original" else "llm1bit quantized")
    task = out["results"]["tinystories_lastword"]
    assert task["docs"] == 8
    acc = task["metrics"]["acc"]["value"]
    assert 0.0 <= acc <= 1.0

    if kind == "original":
        model, tokenizer = load_model(STORIES)
    else:
        model, tokenizer = load_quantized(source, with_tokenizer=True)
    docs = lastword_docs(TEXT.read_text())[:8]
    hits, ppl = direct_lastword(model, tokenizer, docs)
    assert acc == pytest.approx(hits / 8, abs=1e-12)
    assert 0 < hits < 8  # the docs discriminate: neither all right nor all wrong
    assert task["metrics"]["perplexity"]["value"] == pytest.approx(ppl, rel=1e-4)


def test_text_table_and_yaml_path(tmp_path: Path) -> None:
    """A task YAML given as a path (and a folder through --include-path): lm-eval's loaders, offline."""
    from llm1bit.quant.eval.zeroshot import TASKS_DIR

    text = (TASKS_DIR / "tinystories_lastword.yaml").read_text()
    (tmp_path / "my_lastword.yaml").write_text(
        text.replace("task: tinystories_lastword", "task: my_lastword")
    )
    result = invoke("eval", "--model", STORIES, "--tasks", str(tmp_path / "my_lastword.yaml"), "--limit", "3")
    assert result.exit_code == 0, result.output
    assert "my_lastword" in result.output and "acc" in result.output and "perplexity" in result.output
    result = invoke(
        "eval", "--model", STORIES, "--tasks", "my_lastword", "--include-path", str(tmp_path), "--limit", "2",
        "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["results"]["my_lastword"]["docs"] == 2


def test_unfetchable_task_is_one_line() -> None:
    result = invoke("eval", "--model", STORIES, "--tasks", "hellaswag", "--limit", "8")
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "hellaswag" in lines[0] and "could not be fetched" in lines[0], result.output
    assert "Traceback" not in result.output


def test_unknown_task_says_how_to_list() -> None:
    result = invoke("eval", "--model", STORIES, "--tasks", "tinystories_lastwrd")
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "lm-eval ls tasks" in lines[0] and "tinystories_lastword" in lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--limit", "3"], "--limit: only used with --tasks"),
        (["--tasks", "tinystories_lastword", "--max-windows", "2"], "--max-windows: perplexity options"),
        (["--tasks", "tinystories_lastword", "--limit", "0"], "--limit 0 must be at least 1"),
        (["--tasks", "missing.yaml"], "task file missing.yaml does not exist"),
    ],
)
def test_option_errors_are_one_line(args: list[str], message: str) -> None:
    result = invoke("eval", "--model", STORIES, *args)
    assert result.exit_code == 1 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1


def test_missing_model_is_reported_before_the_tasks() -> None:
    """The model is checked first: an unknown task with a missing model names the model."""
    result = invoke("eval", "--model", "no/such/folder", "--tasks", "hellaswag")
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "no/such/folder" in lines[0] and "does not exist" in lines[0], result.output


def test_no_git_probe_outside_a_checkout(tmp_path: Path) -> None:
    """A real process run outside any git checkout: lm-eval's `git describe` probe never reaches stderr."""
    import os
    import subprocess

    env = {**os.environ, "GIT_CEILING_DIRECTORIES": str(tmp_path.parent), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "llm1bit.cli", "eval", "--model", STORIES, "--tasks", "tinystories_lastword",
         "--limit", "2", "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "fatal" not in run.stderr and "not a git repository" not in run.stderr, run.stderr
    assert json.loads(run.stdout)["results"]["tinystories_lastword"]["docs"] == 2
