"""In-memory models (issue #16): every entry point takes an ``onnx.ModelProto`` or its bytes
as well as a path, with the same result (the report's model name apart), and the loading
stage checks a model held in memory as it checks a file — its external data included,
relative to the base folder it is given with."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_near
from onnx_near import InMemoryModel, ModelLoadError, ModelSource, WidthSearch
from onnx_near.load import load_model
from onnx_near.model_source import IN_MEMORY, display_name, report_name
from onnx_near.report import to_json
from onnx_near.width import build_mlp, estimate_from_models, estimate_width

MODELS = Path(__file__).resolve().parents[1] / "models"


def _forms(path: Path) -> dict[str, ModelSource]:
    """The model at ``path`` in each form an entry point takes."""
    proto = onnx.load(str(path))
    return {
        "path": path,
        "str": str(path),
        "ModelProto": proto,
        "bytes": proto.SerializeToString(),
        "InMemoryModel": InMemoryModel(proto, name="named"),
    }


def _json(report: Any, name_field: str = "model") -> dict[str, Any]:
    """The report's JSON document without its model name."""
    doc: dict[str, Any] = json.loads(to_json(report))
    doc.pop(name_field)
    return doc


def _name(form: str, path: Path) -> str:
    return {"path": str(path), "str": str(path), "InMemoryModel": "named"}.get(form, IN_MEMORY)


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_score_and_describe_from_every_form(model: str) -> None:
    """score and describe: the same JSON from a path, a ModelProto and bytes; an in-memory
    model is called by the name it was given, or <in-memory model>."""
    path = MODELS / f"{model}.onnx"
    forms = _forms(path)
    scores = {k: onnx_near.score(m, seed=0, repetitions=2) for k, m in forms.items()}
    layers = {k: onnx_near.describe(m) for k, m in forms.items()}
    for form in forms:
        assert scores[form].model == layers[form].model == _name(form, path)
        assert _json(scores[form]) == _json(scores["path"]), form
        assert _json(layers[form]) == _json(layers["path"]), form
    assert scores["path"].score > 0 and len(layers["path"].layers) == len(scores["path"].layers)


def test_json_of_a_path_keeps_the_path_as_given(monkeypatch: pytest.MonkeyPatch) -> None:
    """A path's report still names the path as it was given, not resolved."""
    monkeypatch.chdir(MODELS.parent)
    assert onnx_near.score("models/mlp.onnx", seed=0).model == "models/mlp.onnx"
    assert onnx_near.describe(Path("models/mlp.onnx")).model == "models/mlp.onnx"
    assert report_name(MODELS / "mlp.onnx") == str(MODELS / "mlp.onnx")
    assert display_name(MODELS / "mlp.onnx") == "mlp.onnx"
    assert display_name(b"x") == report_name(onnx.ModelProto()) == IN_MEMORY


def test_the_callers_proto_is_left_as_it_is() -> None:
    """Loading densifies a sparse initializer, and the rewrite sorts nodes that are out of
    order: in their own copies, never in the ModelProto they were given."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    values = numpy_helper.from_array(np.array([1.0, -2.0, 3.0], np.float32), "w")
    indices = numpy_helper.from_array(np.array([0, 4, 11], np.int64), "w_indices")
    w = helper.make_sparse_tensor(values, indices, [4, 3])
    nodes = [
        helper.make_node("Relu", ["h"], ["y"], name="act"),
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
    ]
    graph = helper.make_graph(nodes, "g", [x], [y], sparse_initializer=[w])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    before = proto.SerializeToString()
    loaded = load_model(proto)
    assert [t.name for t in loaded.proto.graph.initializer] == ["w"] and not loaded.proto.graph.sparse_initializer
    assert loaded.path is None and loaded.base_dir is None and loaded.name == IN_MEMORY
    assert onnx_near.score(proto, seed=0).layers
    assert proto.SerializeToString() == before


def test_rank_models_from_every_form() -> None:
    """rank: a model held in memory is ranked by its name (numbered when it has none), with
    the same score, parameters and MACs as its file."""
    path = MODELS / "mlp.onnx"
    proto = onnx.load(str(path))
    models = [path, proto, proto.SerializeToString(), InMemoryModel(proto, name="mine")]
    r = onnx_near.rank_models(models, config=onnx_near.ScoreConfig(seed=0))
    names = sorted(m.model for m in r.models)
    assert names == sorted([str(path), "<in-memory model 1>", "<in-memory model 2>", "mine"])
    assert all(m.error is None for m in r.models)
    assert len({(m.score, m.score_std, m.params, m.macs) for m in r.models}) == 1


def test_rank_models_in_memory_through_the_sandbox_and_a_results_file(tmp_path: Path) -> None:
    """The sandboxed scorer (what the CLI's rank uses) takes an in-memory model, sent as
    bytes; a results file resumes it by its name and bytes."""
    from onnx_near import sandbox

    proto = onnx.load(str(MODELS / "cnn.onnx"))
    results = tmp_path / "r.jsonl"
    cfg = onnx_near.ScoreConfig(seed=0)
    first = onnx_near.rank_models([InMemoryModel(proto, name="cnn")], config=cfg, scorer=sandbox.score, results=results)
    assert [m.model for m in first.models] == ["cnn"] and first.models[0].error is None
    assert first.models[0].score == onnx_near.score(MODELS / "cnn.onnx", config=cfg).score
    row = json.loads(results.read_text().splitlines()[0])
    assert row["path"] == "cnn" and len(row["sha256"]) == 64
    again = onnx_near.rank_models([InMemoryModel(proto, name="cnn")], config=cfg, results=results, resume=True)
    assert again == first and len(results.read_text().splitlines()) == 1  # nothing scored again
    assert sandbox.score(proto.SerializeToString(), config=cfg).score == first.models[0].score


@pytest.mark.parametrize("command", ["activations", "init"])
def test_activations_and_init_from_every_form(command: str) -> None:
    """activations and init: the same candidates' scores from a path, a ModelProto and bytes."""
    path = MODELS / "mlp.onnx"
    cfg = onnx_near.ScoreConfig(repetitions=2, seed=0)
    out = {}
    for form, m in _forms(path).items():
        if command == "activations":
            out[form] = onnx_near.rank_activations(m, ["relu", "tanh"], config=cfg)
        else:
            out[form] = onnx_near.rank_inits(m, ["pytorch-default", "kaiming-normal"], config=cfg)
        assert out[form].model == _name(form, path)
    for form in out:
        assert _json(out[form]) == _json(out["path"]), form


def test_estimate_width_takes_a_search_and_the_scoring_options() -> None:
    """The search is one frozen dataclass; the older call gives the same estimate, and the
    scoring options (device, threads, max_memory) apply on top of the config."""
    x = np.random.default_rng(0).standard_normal((200, 8)).astype(np.float32)
    search = WidthSearch(inputs=8, outputs=3, widths=(16, 4, 8, 8))
    assert search.widths == (4, 8, 16)
    new = estimate_width(x, search, device="cpu", threads=1, max_memory=1 << 30)
    old = estimate_width(x, 8, 3, [4, 8, 16])
    assert new == old and new.widths == (4, 8, 16)
    with pytest.raises(onnx_near.ConfigError, match="slope"):
        WidthSearch(8, 3, (4, 8, 16), slope="steep")
    with pytest.raises(onnx_near.ConfigError, match="initialisation"):
        WidthSearch(8, 3, (4, 8, 16), init="zeros?")
    with pytest.raises(TypeError):  # not a field of ScoreConfig, as for score()
        estimate_width(x, search, devise="cpu")


@pytest.mark.filterwarnings("ignore:Covariance of the parameters")  # 4 points for 3 parameters
def test_estimate_from_models_from_every_form(tmp_path: Path) -> None:
    """width --model: the user's models as files, ModelProtos or bytes give the same estimate."""
    x = np.random.default_rng(1).standard_normal((200, 8)).astype(np.float32)
    protos = {w: build_mlp(8, [w], 3) for w in (4, 8, 16)}
    paths = {}
    for w, m in protos.items():
        paths[w] = tmp_path / f"mlp{w}.onnx"
        onnx.save(m, str(paths[w]))
    kinds: dict[str, list[tuple[ModelSource, int]]] = {
        "path": [(p, w) for w, p in paths.items()],
        "ModelProto": [(m, w) for w, m in protos.items()],
        "bytes": [(m.SerializeToString(), w) for w, m in protos.items()],
    }
    got = {k: estimate_from_models(v, x, 1, threads=1) for k, v in kinds.items()}
    assert got["ModelProto"] == got["path"] == got["bytes"]


def _with_external_data(folder: Path) -> tuple[Path, onnx.ModelProto]:
    """models/mlp.onnx saved with its weights in mlp.bin beside it, and its graph read
    without them (the external data references stay)."""
    folder.mkdir()
    path = folder / "mlp.onnx"
    onnx.save(
        onnx.load(str(MODELS / "mlp.onnx")), str(path), save_as_external_data=True, location="mlp.bin", size_threshold=0
    )
    return path, onnx.load(str(path), load_external_data=False)


def test_external_data_with_a_base_folder(tmp_path: Path) -> None:
    """An in-memory model whose weights lie in external data is scored from its base folder,
    as its file is."""
    path, proto = _with_external_data(tmp_path / "m")
    assert any(t.data_location == TensorProto.EXTERNAL for t in proto.graph.initializer)
    held = InMemoryModel(proto, base_dir=tmp_path / "m")
    assert _json(onnx_near.score(held, seed=0)) == _json(onnx_near.score(path, seed=0))
    assert _json(onnx_near.describe(InMemoryModel(proto.SerializeToString(), str(tmp_path / "m")))) == _json(
        onnx_near.describe(path)
    )
    ranked = onnx_near.rank_activations(held, ["relu", "silu"], config=onnx_near.ScoreConfig(repetitions=1))
    assert len(ranked.candidates) == 2


def test_external_data_without_a_base_folder_is_one_sentence(tmp_path: Path) -> None:
    """Without a base folder, a model that refers to external data is refused with one
    sentence that says what to pass; with one, its locations are checked as a file's are."""
    _, proto = _with_external_data(tmp_path / "m")
    for model in (proto, proto.SerializeToString()):
        with pytest.raises(ModelLoadError) as e:
            onnx_near.score(model)
        msg = str(e.value)
        assert "without a base folder" in msg and "base_dir" in msg and "\n" not in msg and msg.count(". ") == 0
    with pytest.raises(ModelLoadError, match="missing from"):
        load_model(InMemoryModel(proto, base_dir=tmp_path))  # a folder without mlp.bin
    for t in proto.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = "../mlp.bin"
    with pytest.raises(ModelLoadError, match="outside the model's folder"):
        load_model(InMemoryModel(proto, base_dir=tmp_path / "m"))
    with pytest.raises(ModelLoadError, match="is not a folder"):
        load_model(InMemoryModel(proto, base_dir=tmp_path / "nowhere"))


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "is empty"),
        (b"\x08\x07garbage that is not a protobuf", "not a readable ONNX model"),
        (onnx.ModelProto(ir_version=8).SerializeToString(), "not an ONNX model"),
    ],
)
def test_hostile_bytes_are_refused_as_files_are(data: bytes, match: str) -> None:
    """Bytes get the checks a file gets, each failure one sentence naming the model."""
    with pytest.raises(ModelLoadError, match=match) as e:
        load_model(InMemoryModel(data, name="given.onnx"))
    assert "'given.onnx'" in str(e.value)
