"""Ranking many models: a real local Ray, rows that survive a kill, --from, flat memory.

Ray is started once for the module (``ray.init(num_cpus=2)``, no mocks); ``--engine ray``
in this process then uses it.  The results-file tests run the local engine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from graphs import memory_bomb, mlp, save

from onnx_near import score
from onnx_near.cli import main
from onnx_near.config import ScoreConfig
from onnx_near.engines import LocalEngine, RayEngine, check_reachable
from onnx_near.errors import ConfigError, InputDataError
from onnx_near.rank import rank_from_results, rank_models, read_accuracies
from onnx_near.results import ResultRow, read_rows

WIDTHS = [2, 4, 8, 16, 32, 64]


@pytest.fixture(scope="module")
def ray_local() -> Iterator[Any]:
    """A local Ray with 2 CPUs for the whole module, shut down after it."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture()
def zoo(tmp_path: Path) -> Path:
    """Six MLPs of growing width, a broken file, and made-up accuracies in a CSV."""
    folder = tmp_path / "zoo"
    folder.mkdir()
    rows = ["model,accuracy"]
    for k, width in enumerate(WIDTHS):
        save(mlp(d_in=16, hidden=width, d_out=10), folder / f"w{width:02d}.onnx")
        rows.append(f"w{width:02d}.onnx,{0.5 + 0.05 * k}")
    (folder / "broken.onnx").write_bytes(b"not a model")
    (folder / "acc.csv").write_text("\n".join(rows) + "\n")
    return folder


def _copies(folder: Path, n: int) -> Path:
    """``n`` small models (four distinct MLPs, copied) in ``folder``."""
    folder.mkdir()
    blobs = [mlp(d_in=8, hidden=w, d_out=4).SerializeToString() for w in (4, 8, 16, 32)]
    for k in range(n):
        (folder / f"m{k:04d}.onnx").write_bytes(blobs[k % 4])
    return folder


def _cli(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(main, [*args, "-q"])
    return r.exit_code, r.stdout, r.stderr


def _without_seconds(path: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return sorted(({k: v for k, v in r.items() if k != "seconds"} for r in rows), key=lambda r: r["path"])


def raise_on_w04(path: str, **kwargs: Any) -> Any:
    """A scorer with a bug for one model (module level: it pickles by name for the pool)."""
    if path.endswith("w04.onnx"):
        raise RuntimeError("boom on w04")
    return score(path, **kwargs)


def die_on_w08(path: str, **kwargs: Any) -> Any:
    """A scorer whose worker process dies on one model (a crash inside onnxruntime)."""
    if path.endswith("w08.onnx"):
        os._exit(3)
    return score(path, **kwargs)


def test_ray_engine_gives_the_local_scores(zoo: Path, ray_local: Any, tmp_path: Path) -> None:
    """--engine ray: the same ranking JSON as the local engine, and the same rows (timings aside)."""
    acc = str(zoo / "acc.csv")
    code, local, err = _cli("rank", str(zoo), "--accuracy", acc, "--format", "json", "--results", f"{tmp_path}/l.jsonl")
    assert code == 0, err
    code, on_ray, err = _cli(
        "rank", str(zoo), "--accuracy", acc, "--format", "json", "--engine", "ray", "--results", f"{tmp_path}/r.jsonl"
    )
    assert code == 0, err
    assert on_ray == local and len(json.loads(local)["models"]) == 7
    assert _without_seconds(tmp_path / "r.jsonl") == _without_seconds(tmp_path / "l.jsonl")
    assert ray_local.is_initialized()  # a Ray the run found running is left running
    plain = rank_models([zoo], config=ScoreConfig(seed=3))
    chunked = rank_models([zoo], config=ScoreConfig(seed=3), engine=RayEngine(chunk=3, cpus_per_model=0.5))
    assert chunked.to_dict() == plain.to_dict()


def test_a_model_over_the_memory_limit_is_one_row_on_ray(zoo: Path, ray_local: Any) -> None:
    """rank --engine ray runs each model in a sandboxed child of its Ray worker, as the local
    engine does: a model whose graph makes a 3 GiB tensor under --max-memory 256M is one error
    row, and every other model is scored."""
    save(memory_bomb("Expand"), zoo / "bomb.onnx")
    code, out, err = _cli("rank", str(zoo), "--format", "json", "--engine", "ray", "--max-memory", "256M")
    assert code == 0, err
    errors = {Path(m["model"]).name: m["error"] for m in json.loads(out)["models"] if m["error"]}
    assert set(errors) == {"broken.onnx", "bomb.onnx"}, errors
    assert "needs more memory" in errors["bomb.onnx"] and "--max-memory" in errors["bomb.onnx"], errors
    assert len(json.loads(out)["models"]) == len(WIDTHS) + 2


def test_failing_models_are_rows_on_both_engines(zoo: Path, ray_local: Any) -> None:
    """A broken file, a model whose scorer raises a non-NearError, and one whose worker dies
    are rows with their error; every other model is scored, on either engine."""

    def raise_nested(path: str, **kwargs: Any) -> Any:  # defined here: Ray pickles it by value
        if path.endswith("w04.onnx"):
            raise RuntimeError("boom on w04")
        return score(path, **kwargs)

    def die_nested(path: str, **kwargs: Any) -> Any:
        if path.endswith("w08.onnx"):
            os._exit(3)
        return score(path, **kwargs)

    runs = {
        "local, in process": rank_models([zoo], scorer=raise_on_w04),
        "local pool": rank_models([zoo], engine=LocalEngine(2), scorer=raise_on_w04),
        "ray": rank_models([zoo], engine=RayEngine(chunk=2), scorer=raise_nested),
    }
    for name, r in runs.items():
        errors = {Path(m.model).name: m.error for m in r.models if m.error is not None}
        assert set(errors) == {"broken.onnx", "w04.onnx"}, name
        assert errors["w04.onnx"] == "internal error: RuntimeError: boom on w04", name
        assert "not a readable ONNX model" in (errors["broken.onnx"] or ""), name
        assert [Path(m.model).name for m in r.models[-2:]] == ["broken.onnx", "w04.onnx"]  # failed ones last
    for name, r in {
        "local pool": rank_models([zoo], engine=LocalEngine(2), scorer=die_on_w08),
        "ray": rank_models([zoo], engine=RayEngine(chunk=3), scorer=die_nested),
    }.items():
        errors = {Path(m.model).name: m.error for m in r.models if m.error is not None}
        assert set(errors) == {"broken.onnx", "w08.onnx"}, (name, errors)
        assert (errors["w08.onnx"] or "").startswith("internal error: "), name


def test_resume_after_a_killed_run(tmp_path: Path) -> None:
    """A run killed mid-way keeps every finished row; --resume scores only the rest, each
    model once, and a line the kill cut short is dropped."""
    folder = _copies(tmp_path / "many", 240)
    results = tmp_path / "r.jsonl"
    cmd = [sys.executable, "-m", "onnx_near.cli", "rank", str(folder), "--results", str(results), "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if results.exists() and results.read_bytes().count(b"\n") >= 10:
                break
            time.sleep(0.005)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    first = results.read_text()
    done = first.count("\n")
    assert 10 <= done < 240, f"the run was not killed mid-way ({done} rows); stderr: {proc.stderr.read()!r}"  # type: ignore[union-attr]
    with results.open("a") as f:
        f.write('{"model": "cut short by the kill')  # a half-written last line
    code, out, err = _cli("rank", str(folder), "--results", str(results), "--resume", "--format", "json")
    assert code == 0, err
    text = results.read_text()
    assert text.startswith(first[: first.rfind("\n") + 1])  # the finished rows are kept as they were
    rows = list(read_rows(results))
    paths = [r.path for r in rows]
    assert len(paths) == len(set(paths)) == 240  # all present, none scored twice
    assert len(json.loads(out)["models"]) == 240 and all(r.error is None for r in rows)
    code, _, err = _cli("rank", str(folder), "--results", str(results), "--resume")  # nothing left to do
    assert code == 0 and results.read_text() == text, err


def test_resume_keys_on_hash_and_options(tmp_path: Path) -> None:
    """A changed file or a changed seed is scored again; an internal error is retried and its
    newer row supersedes the old one; --from refuses a file that mixes option sets."""
    folder = _copies(tmp_path / "m", 4)
    results = tmp_path / "r.jsonl"
    rank_models([folder], results=results, scorer=raise_on_m0001)
    assert sum(1 for r in read_rows(results) if r.error) == 1
    save(mlp(d_in=8, hidden=64, d_out=4), folder / "m0002.onnx")  # edited after the run
    r = rank_models([folder], results=results, resume=True)
    rows = list(read_rows(results))
    assert [Path(x.path).name for x in rows[4:]] == ["m0001.onnx", "m0002.onnx"]  # the retried and the edited
    assert all(m.error is None for m in r.models) and len(r.models) == 4
    assert {Path(m.model).name for m in rank_from_results(results).models} == {f"m{k:04d}.onnx" for k in range(4)}
    rank_models([folder / "m0003.onnx"], config=ScoreConfig(seed=7), results=results, resume=True)
    assert len(list(read_rows(results))) == 7  # a new seed: a new row
    with pytest.raises(InputDataError, match="seed 0 and 7"):
        rank_from_results(results)
    with pytest.raises(InputDataError, match="already exists"):
        rank_models([folder], results=results)


def raise_on_m0001(path: str, **kwargs: Any) -> Any:
    if path.endswith("m0001.onnx"):
        raise KeyError("bug")
    return score(path, **kwargs)


def test_from_recomputes_the_summary_and_plots(zoo: Path, tmp_path: Path) -> None:
    """`rank --from FILE.jsonl --accuracy` gives the live run's ranking without scoring;
    --plot draws the two panels with accuracies and a histogram without."""
    acc = str(zoo / "acc.csv")
    results = str(tmp_path / "r.jsonl")
    code, live, err = _cli("rank", str(zoo), "--accuracy", acc, "--results", results, "--format", "json")
    assert code == 0, err
    code, again, err = _cli(
        "rank", "--from", results, "--accuracy", acc, "--format", "json", "--plot", f"{tmp_path}/a.png"
    )
    assert code == 0, err
    assert again == live and set(json.loads(again)["correlation"]) == {"near", "params", "macs"}
    code, _, err = _cli("rank", "--from", results, "--plot", f"{tmp_path}/h.png")
    assert code == 0, err
    for png in ("a.png", "h.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = rank_from_results(results, read_accuracies(acc))
    assert r.correlation["params"].spearman_rho == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--engine", "ray"], "--engine ray needs Ray, which is not installed: pip install 'onnx-near[ray]'"),
        (["--address", "auto"], "--address is an option of --engine ray"),
        (["--engine", "ray", "-j", "2"], "--jobs is an option of --engine local"),
        (["--resume"], "--resume goes on with a results file"),
        (["--from", "r.jsonl"], "--from ranks a results file: give it without MODELS"),
        (["--results", "{tmp}/same", "-o", "{tmp}/same"], "must name different files"),
    ],
)
def test_rank_option_errors(
    args: list[str], message: str, zoo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each bad combination is one sentence and exit code 2 (Ray hidden: as if not installed)."""
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    code, _, err = _cli("rank", str(zoo), *(a.replace("{tmp}", str(tmp_path)) for a in args))
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_unreachable_ray_address_is_refused_at_once() -> None:
    """Ray would retry an unreachable HOST:PORT for ever: it is refused first, in one sentence."""
    with pytest.raises(ConfigError, match=r"cannot reach the Ray cluster at 127\.0\.0\.1:1"):
        check_reachable("127.0.0.1:1", timeout=5)  # loopback, a port nothing listens on
    with pytest.raises(ConfigError, match="expects auto, HOST:PORT or ray://HOST:PORT"):
        check_reachable("head-node")
    check_reachable("auto")  # left to Ray


def test_plot_without_matplotlib(zoo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--plot without matplotlib says how to install it, in one sentence."""
    results = tmp_path / "r.jsonl"
    rank_models([zoo], results=results)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, _, err = _cli("rank", "--from", str(results), "--plot", str(tmp_path / "p.png"))
    assert code == 2 and "pip install 'onnx-near[plot]'" in err, err
    with pytest.raises(ConfigError, match="matplotlib"):
        from onnx_near.plot import plot_rank

        plot_rank(rank_from_results(results), tmp_path / "p.png")


def _rss() -> int:
    """This process's resident set, in bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads the resident set from /proc")
def test_memory_stays_flat_over_a_thousand_models(tmp_path: Path) -> None:
    """Streaming 1,000 tiny models to a results file: the resident set after 1,000 models is
    within a few MiB of that after 100 (a line per model at most, not a result per model)."""
    folder = _copies(tmp_path / "k", 1000)
    seen: dict[int, int] = {}

    def progress(done: int, total: int) -> None:
        if done in (100, 1000):
            seen[done] = _rss()

    r = rank_models([folder], results=tmp_path / "r.jsonl", progress=progress)
    assert len(r.models) == 1000 and all(m.error is None for m in r.models)
    growth = seen[1000] - seen[100]
    assert growth < 8 * 2**20, f"resident set grew {growth / 2**20:.1f} MiB over 900 models"
    assert len(list(read_rows(tmp_path / "r.jsonl"))) == 1000
    assert isinstance(next(read_rows(tmp_path / "r.jsonl")), ResultRow)
