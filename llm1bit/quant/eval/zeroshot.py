"""Zero-shot accuracy through lm-evaluation-harness (`llm1bit eval --tasks`).

lm-eval is an optional extra (`pip install 'llm1bit[eval]'`) and is imported only here, only when
`--tasks` is given. The model is built the way `llm1bit eval` builds it (`load_model`: an original folder,
a .gguf, a hub id or an `llm1bit quantize` folder) and wrapped in lm-eval's `HFLM`.

llm1bit ships one local task, `tinystories_lastword` (llm1bit/tasks/), whose docs are built in memory from
a TinyStories text file (`lastword_docs`), so it runs offline."""

from __future__ import annotations

import contextlib
import difflib
import functools
import io
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm1bit.errors import UserError
from llm1bit.quant.calib import shared_data_file

if TYPE_CHECKING:
    from rich.console import Console

EXTRA_HINT = "pip install 'llm1bit[eval]'"
TASKS_DIR = Path(__file__).resolve().parents[2] / "tasks"
STORY_SEPARATOR = "<|endoftext|>"
# A sentence-final word: letters (inner apostrophes/hyphens allowed) after a space, then the sentence's
# closing punctuation and quotes, then whitespace or the end of the story.
_LAST_WORD = re.compile(r"(?<= )([A-Za-z]+(?:['-][A-Za-z]+)*)[.!?]+[\"')]*(?=\s|$)")
SEEDS = {"random_seed": 0, "numpy_random_seed": 1234, "torch_random_seed": 1234, "fewshot_random_seed": 1234}


# --------------------------------------------------------------------------- the local task's docs


def lastword_docs(text: str) -> list[dict]:
    """LAMBADA-style docs from stories separated by <|endoftext|>: one per sentence-final word.

    context = the story from its start up to (not including) the space before the word, target = " " + word;
    the sentence's closing punctuation is not part of the target. Words at the very start of a story
    (no context) are skipped."""
    docs = []
    for story_index, raw in enumerate(s for s in text.split(STORY_SEPARATOR) if s.strip()):
        story = raw.strip()
        for m in _LAST_WORD.finditer(story):
            context = story[: m.start() - 1]
            if context.strip():
                docs.append(
                    {
                        "story": story_index,
                        "offset": m.start(),
                        "context": context,
                        "target": " " + m.group(1),
                    }
                )
    return docs


def lastword_dataset(text_file: str = "tinystories/valid-head.txt", **_metadata):
    """lm-eval `custom_dataset` hook of tinystories_lastword: a DatasetDict with one `test` split."""
    import datasets

    path = shared_data_file(text_file, "task data file")
    docs = lastword_docs(path.read_text(encoding="utf-8"))
    if not docs:
        raise UserError(f"task data file {path} has no sentence-final words to predict")
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


# --------------------------------------------------------------------------- running lm-eval


@dataclass
class ZeroShotResult:
    lm_eval_version: str
    tasks: dict[str, dict] = field(default_factory=dict)  # task -> {"docs", "version", "metrics", ...}
    seconds: float = 0.0


def import_lm_eval():
    """lm_eval, or a one-line error naming the extra that installs it."""
    try:
        import lm_eval
        import lm_eval.models.huggingface  # noqa: F401  (HFLM: needs torch + transformers)
        import lm_eval.tasks  # noqa: F401
    except ImportError as exc:
        raise UserError(
            f"--tasks needs lm-evaluation-harness, which is not installed ({exc}): {EXTRA_HINT}"
        ) from None
    _quiet_lm_eval()
    return lm_eval


def shipped_tasks() -> list[str]:
    """The tasks llm1bit ships (llm1bit/tasks/NAME.yaml defines task NAME)."""
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))


def _is_yaml_path(spec: str) -> bool:
    return spec.endswith((".yaml", ".yml"))


def _quiet_lm_eval() -> None:
    for name in ("lm-eval", "lm_eval"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    except ImportError:
        pass


@contextlib.contextmanager
def _env(**values: str):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _quiet_subprocess_stderr(console: Console | None):
    """File descriptor 2 goes to /dev/null for the block, so subprocesses lm-eval starts (its `git describe`
    probe prints "fatal: not a git repository" outside a checkout) stay off the terminal; `console`, if any,
    keeps writing to the real stderr through a duplicate of it."""
    import sys

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (an embedding host): nothing to protect
        yield
        return
    old_file = console.file if console is not None else None
    real = os.fdopen(os.dup(saved), "w", buffering=1)
    if console is not None:
        console.file = real
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        if console is not None:
            console.file = old_file
        real.close()


@contextlib.contextmanager
def _offline_if_hub_unreachable(check: bool):
    """With no hub, datasets and huggingface_hub go offline for the block (restored after it), so an uncached
    task fails at once instead of after minutes of retries; cached task data still loads."""
    from llm1bit.quant.hf.loading import hub_reachable

    if not check or hub_reachable():
        yield
        return
    modules = []
    with contextlib.suppress(ImportError):
        import huggingface_hub.constants

        modules.append((huggingface_hub.constants, ("HF_HUB_OFFLINE",)))
    with contextlib.suppress(ImportError):
        import datasets.config

        modules.append((datasets.config, ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")))
    saved = [(m, name, getattr(m, name)) for m, names in modules for name in names if hasattr(m, name)]
    try:
        for m, name, _ in saved:
            setattr(m, name, True)
        with _env(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1"):
            yield
    finally:
        for m, name, value in saved:
            setattr(m, name, value)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().strip("\"'") or type(exc).__name__
    return text.splitlines()[0]


@functools.lru_cache(maxsize=8)
def _task_manager(paths: tuple[str, ...], include_defaults: bool):
    """lm-eval's index of task YAMLs (kept per process: indexing the built-in ones takes seconds)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(paths), include_defaults=include_defaults)


def load_tasks(specs: list[str], include_paths: list[str]) -> tuple[list, Any]:
    """lm-eval Task/Group objects for `specs` (names or YAML files) and the TaskManager that built them;
    each failure is a one-line error.

    Only llm1bit's tasks and --include-path folders are indexed first (lm-eval's ~15k built-in YAMLs take
    seconds to index); the built-in index is built when a name is not found there."""
    for folder in include_paths:
        if not Path(folder).is_dir():
            raise UserError(f"--include-path {folder} is not a folder")
    for spec in specs:
        if _is_yaml_path(spec) and not Path(spec).is_file():
            raise UserError(f"task file {spec} does not exist")
    paths = (str(TASKS_DIR), *include_paths)
    manager = _task_manager(paths, False)
    if not all(_is_yaml_path(s) or s in manager.all_tasks for s in specs):
        manager = _task_manager(paths, True)
        known = manager.all_tasks
        for spec in specs:
            if not _is_yaml_path(spec) and spec not in known:
                close = difflib.get_close_matches(spec, known, n=3, cutoff=0.6)
                hint = f" (did you mean {' or '.join(close)}?)" if close else ""
                raise UserError(
                    f"unknown task {spec!r}{hint}; list the known ones with `lm-eval ls tasks` "
                    f"(llm1bit adds {', '.join(shipped_tasks())}; --include-path DIR adds a folder of task YAMLs)"
                )
    objects = []
    hub = not all(s in shipped_tasks() for s in specs)  # llm1bit's own tasks never touch the hub
    for spec in specs:
        try:
            with _offline_if_hub_unreachable(hub):
                loaded = manager.load([spec])
        except UserError:
            raise
        except (ConnectionError, FileNotFoundError, TimeoutError) as exc:
            raise UserError(
                f"task {spec}: its data could not be fetched ({_first_line(exc)}); "
                "lm-eval downloads task data from the Hugging Face hub on first use"
            ) from None
        except Exception as exc:  # lm-eval and datasets raise many types; the message names the cause
            if type(exc).__name__ in ("DatasetNotFoundError", "LocalEntryNotFoundError", "HfHubHTTPError"):
                raise UserError(f"task {spec}: its data could not be fetched ({_first_line(exc)})") from None
            raise UserError(
                f"task {spec}: cannot be loaded ({type(exc).__name__}: {_first_line(exc)})"
            ) from None
        groups = loaded.get("groups") or {}
        children = {c for names in (loaded.get("group_map") or {}).values() for c in names}
        top = [g for name, g in groups.items() if name not in children]
        objects.extend(top or loaded["tasks"].values())
    return objects, manager


def _progress_lm(hflm_cls, console: Console | None):
    """An HFLM whose request loop reports to a rich progress bar instead of tqdm."""

    class ProgressHFLM(hflm_cls):
        _progress = None
        _task = None

        def _run(self, kind: str, method, requests, disable_tqdm: bool = False):
            if console is None:
                return method(requests, disable_tqdm=True)
            from llm1bit.progress import progress_bar

            with progress_bar("requests", console) as progress:
                self._progress = progress
                self._task = progress.add_task(f"{kind} requests", total=len(requests))
                try:
                    return method(requests, disable_tqdm=True)
                finally:
                    progress.update(self._task, completed=len(requests))
                    self._progress = None

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return self._run("loglikelihood", super().loglikelihood, requests)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return self._run("rolling loglikelihood", super().loglikelihood_rolling, requests)

        def generate_until(self, requests, disable_tqdm: bool = False):
            return self._run("generation", super().generate_until, requests)

        def _model_call(self, inps, *args, **kwargs):
            out = super()._model_call(inps, *args, **kwargs)
            if self._progress is not None:
                self._progress.advance(self._task, inps.shape[0])
            return out

    return ProgressHFLM


def run_tasks(
    model,
    tokenizer,
    specs: list[str],
    include_paths: list[str] | None = None,
    limit: int | None = None,
    batch_size: int = 1,
    bootstrap_iters: int = 1000,
    console: Console | None = None,
    loaded: tuple[list, Any] | None = None,
) -> ZeroShotResult:
    """Run `lm_eval.simple_evaluate` on `specs` with `model` (already on its device) wrapped in HFLM.

    `console` (made with `file=`): where the request progress bar goes; None: no progress. `loaded`: what
    `load_tasks(specs, include_paths)` returned, when the tasks were checked before the model was loaded."""
    lm_eval = import_lm_eval()
    from lm_eval.models.huggingface import HFLM

    tasks, manager = loaded or load_tasks(specs, list(include_paths or []))
    lm = _progress_lm(HFLM, console)(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    start = time.perf_counter()
    # lm-eval prints notices to stdout and tqdm bars to stderr: stdout stays for our table / JSON, and
    # progress is `console`'s rich bar (a Console made with an explicit file, so it still reaches it).
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        with _env(DISABLE_MULTIPROC="1", TOKENIZERS_PARALLELISM="false"), _quiet_subprocess_stderr(console):
            out = lm_eval.simple_evaluate(
                model=lm,
                tasks=tasks,
                task_manager=manager,
                limit=limit,
                bootstrap_iters=bootstrap_iters,
                log_samples=False,
                **SEEDS,
            )
    result = ZeroShotResult(lm_eval_version=lm_eval.__version__, seconds=time.perf_counter() - start)
    for name, values in out["results"].items():
        metrics = {}
        for key, value in values.items():
            metric, sep, _filter = key.partition(",")
            if not sep or metric.endswith("_stderr") or not isinstance(value, int | float):
                continue
            stderr = values.get(f"{metric}_stderr,{_filter}")
            metrics[metric if _filter == "none" else key] = {
                "value": float(value),
                "stderr": float(stderr)
                if isinstance(stderr, int | float) and math.isfinite(stderr)
                else None,
            }
        n = (out.get("n-samples") or {}).get(name) or {}
        config = (out.get("configs") or {}).get(name) or {}
        result.tasks[name] = {
            "docs": n.get("effective"),
            "docs_available": n.get("original"),
            "version": (out.get("versions") or {}).get(name),
            "num_fewshot": (out.get("n-shot") or {}).get(name),
            "dataset": {
                k: config[k]
                for k in ("dataset_path", "dataset_name", "dataset_kwargs", "test_split")
                if config.get(k) is not None
            },
            "metrics": metrics,
        }
    return result


def results_table(result: ZeroShotResult, title: str):
    """A rich table: one row per (task, metric)."""
    from rich.table import Table

    table = Table(title=title)
    for col, justify in (("task", "left"), ("docs", "right"), ("metric", "left"), ("value", "right")):
        table.add_column(col, justify=justify)
    table.add_column("± stderr", justify="right")
    for name, task in result.tasks.items():
        for i, (metric, m) in enumerate(task["metrics"].items()):
            table.add_row(
                name if i == 0 else "",
                str(task["docs"]) if i == 0 else "",
                metric,
                f"{m['value']:.4f}",
                "" if m["stderr"] is None else f"{m['stderr']:.4f}",
            )
    return table
