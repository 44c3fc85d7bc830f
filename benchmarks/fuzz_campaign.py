"""A fuzzing campaign over hostile model files (issue #13): byte and graph mutations of real
models, with fresh seeds, each scored by the CLI as a user would run it.

    python benchmarks/fuzz_campaign.py --cases 100000 --seed 2026 --workers 1

Every case must end with a score (exit 0) or one clean sentence (exit 2): an internal error
(exit 3), a traceback, a second error line, a dead worker (a crash of the interpreter or of
onnxruntime) or a case running past its time limit is a failure.  Cases run in worker
processes, so a crash kills one worker, is recorded with its seed, and a fresh worker goes
on; each failing case's bytes are written to ``--failures`` (default /tmp/fuzz_failures)
to become a regression test.  Prints the cases run per class of mutation and the failures.

The mutations are those of ``tests/test_fuzz.py`` (byte flips and truncations; dropped,
duplicated and rewired nodes, wrong op types, absurd dims, bad element types and versions)
plus what this round added to the pipeline: the whole graph wrapped in an ``If``, weights
moved into ``Constant`` nodes, a weight made a sparse initializer, external-data locations
rewritten, an input made a scalar or a state.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

LIMITS = ["--rows", "16", "--max-memory", "1G", "--timeout", "20", "--format", "json", "--quiet"]
NEW_KINDS = ["wrap_in_if", "to_constant", "to_sparse", "external_location", "scalar_input"]


def sources() -> list[Path]:
    models = ROOT / "models"
    picked = [models / "mlp.onnx", models / "cnn.onnx", models / "vet" / "healthy.onnx", models / "transformer.onnx"]
    for sub in ("torch-dynamo", "arch-torchscript", "tf2onnx", "ort-extended"):
        picked += sorted((models / "corpus" / sub).glob("*.onnx"))[:3]
    return [p for p in picked if p.exists() and p.stat().st_size < 300_000]


def _new_mutation(m: object, kind: str, rng: random.Random) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    assert isinstance(m, onnx.ModelProto)
    g = m.graph
    if kind == "wrap_in_if":
        cond = "fuzz_cond"
        body = helper.make_graph(list(g.node), "then", [], list(g.output))
        other = helper.make_graph(list(g.node), "else", [], list(g.output))
        node = helper.make_node("If", [cond], [o.name for o in g.output], then_branch=body, else_branch=other)
        c = helper.make_node("Constant", [], [cond], value=numpy_helper.from_array(np.array(rng.random() < 0.5)))
        del g.node[:]
        g.node.extend([c, node])
    elif kind == "to_constant" and g.initializer:
        t = g.initializer[rng.randrange(len(g.initializer))]
        node = helper.make_node("Constant", [], [t.name], value=t)
        g.initializer.remove(t)
        g.node.insert(0, node)
    elif kind == "to_sparse" and g.initializer:
        t = g.initializer[rng.randrange(len(g.initializer))]
        a = numpy_helper.to_array(t).reshape(-1)
        idx = np.flatnonzero(a)[: rng.choice([0, 1, 5, 10**6])]
        if rng.random() < 0.3 and idx.size:
            idx = idx + rng.choice([-1, 10**7])  # out of range
        values = numpy_helper.from_array(a[np.clip(idx, 0, max(a.size - 1, 0))] if a.size else a, t.name)
        sp = helper.make_sparse_tensor(values, numpy_helper.from_array(idx.astype(np.int64), t.name + "_i"), t.dims)
        g.initializer.remove(t)
        g.sparse_initializer.append(sp)
    elif kind == "external_location" and g.initializer:
        t = g.initializer[rng.randrange(len(g.initializer))]
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        e = t.external_data.add()
        e.key, e.value = "location", rng.choice(["w.bin", "../w.bin", "/dev/zero", "w\x00.bin", "", ".", "a" * 300])
    elif kind == "scalar_input" and g.input:
        v = g.input[rng.randrange(len(g.input))]
        del v.type.tensor_type.shape.dim[:]
        if rng.random() < 0.5:
            for d in (2, 1, 8):
                v.type.tensor_type.shape.dim.add().dim_value = d


def make_case(seed: int, srcs: list[Path]) -> tuple[str, bytes]:
    """The mutation class and the bytes of case ``seed`` (deterministic)."""
    import onnx
    from test_fuzz import MUTATIONS, _mutate

    rng = random.Random(seed)
    source = srcs[rng.randrange(len(srcs))]
    roll = rng.random()
    if roll < 0.4:
        data = bytearray(source.read_bytes())
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            data = data[: rng.randrange(len(data) + 1)]
        return "bytes", bytes(data)
    m = onnx.load(str(source))
    if roll < 0.8:
        kinds = [rng.choice(MUTATIONS) for _ in range(rng.randint(1, 3))]
        for kind in kinds:
            _mutate(m, kind, rng.randrange(1001), rng.randrange(1001))
        return "graph:" + kinds[0], m.SerializeToString()
    kind = rng.choice(NEW_KINDS)
    try:
        _new_mutation(m, kind, rng)
    except Exception:  # a mutation the builder itself refuses: the case is the unmutated model
        pass
    return "new:" + kind, m.SerializeToString()


def worker(start: int, count: int, out: Path) -> None:
    """Run cases ``start … start+count-1`` in this process, one JSON line each."""
    from click.testing import CliRunner

    from onnx_near.cli import main

    srcs = sources()
    with open(out, "a") as log, tempfile.TemporaryDirectory() as tmp:
        for seed in range(start, start + count):
            try:
                kind, data = make_case(seed, srcs)
            except Exception as e:  # the mutation itself failed (onnx refused to build it): no case
                log.write(json.dumps({"seed": seed, "kind": "unmade", "exit": None, "ok": True, "note": repr(e)[:200]}))
                log.write("\n")
                log.flush()
                continue
            path = Path(tmp) / "fuzzed.onnx"
            path.write_bytes(data)
            log.write(json.dumps({"seed": seed, "kind": kind, "started": True}) + "\n")
            log.flush()
            t0 = time.monotonic()
            r = CliRunner().invoke(main, ["score", str(path), *LIMITS])
            elapsed = time.monotonic() - t0
            lines = r.stderr.strip().splitlines()
            ok = r.exit_code in (0, 2) and "Traceback" not in r.stderr and elapsed < 40
            if ok and r.exit_code == 2:
                ok = [x for x in lines if "error:" in x] == lines[-1:] and lines[-1].startswith("onnx-near: error: ")
            log.write(
                json.dumps(
                    {
                        "seed": seed,
                        "kind": kind,
                        "exit": r.exit_code,
                        "ok": ok,
                        "s": round(elapsed, 3),
                        "error": (lines[-1][:300] if lines else "") if not ok else "",
                    }
                )
                + "\n"
            )
            log.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=2026, help="first seed (fresh seeds: change it)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=500, help="cases per worker process")
    ap.add_argument("--failures", type=Path, default=Path("/tmp/fuzz_failures"))
    ap.add_argument("--worker", nargs=3, metavar=("START", "COUNT", "LOG"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(int(args.worker[0]), int(args.worker[1]), Path(args.worker[2]))
        return
    args.failures.mkdir(parents=True, exist_ok=True)
    logdir = Path(tempfile.mkdtemp(prefix="fuzz-"))
    todo = collections.deque(
        (s, min(args.chunk, args.seed + args.cases - s)) for s in range(args.seed, args.seed + args.cases, args.chunk)
    )
    running: list[tuple[subprocess.Popen[bytes], int, int, Path]] = []
    t0 = time.monotonic()
    results: dict[int, dict[str, object]] = {}
    while todo or running:
        while todo and len(running) < args.workers:
            start, count = todo.popleft()
            log = logdir / f"{start}.jsonl"
            p = subprocess.Popen(
                [sys.executable, __file__, "--worker", str(start), str(count), str(log)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
            running.append((p, start, count, log))
        time.sleep(0.5)
        for item in list(running):
            p, start, count, log = item
            if p.poll() is None:
                continue
            running.remove(item)
            lines = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
            done = {x["seed"]: x for x in lines if "exit" in x}
            results.update(done)
            started = [x["seed"] for x in lines if x.get("started")]
            last = max([start - 1, *done, *started])
            if p.returncode != 0 and (not started or started[-1] in done) and last < start + count - 1:
                todo.appendleft((last + 1, start + count - last - 1))  # died between cases: go on after them
            if p.returncode != 0 and started and started[-1] not in done:  # the worker died on this case
                seed = started[-1]
                kind = next(x["kind"] for x in lines if x["seed"] == seed)
                results[seed] = {
                    "seed": seed,
                    "kind": kind,
                    "exit": p.returncode,
                    "ok": False,
                    "error": f"worker died (signal {-p.returncode})" if p.returncode < 0 else "worker died",
                }
                rest = start + count - seed - 1
                if rest > 0:
                    todo.appendleft((seed + 1, rest))
    elapsed = time.monotonic() - t0
    srcs = sources()
    per_kind: collections.Counter[str] = collections.Counter()
    unmade = [r for r in results.values() if r.get("kind") == "unmade"]
    for r in unmade:
        del results[int(r["seed"])]  # type: ignore[arg-type]
    failed = [r for r in results.values() if not r["ok"]]
    for r in results.values():
        per_kind[str(r["kind"]).split(":")[0] + ":" + str(r["kind"]).split(":")[-1]] += 1
    for r in failed:
        _, data = make_case(int(r["seed"]), srcs)  # type: ignore[arg-type]
        (args.failures / f"case_{r['seed']}.onnx").write_bytes(data)
    scored = sum(1 for r in results.values() if r.get("exit") == 0)
    print(
        f"{len(results)} cases (seeds {args.seed}…{args.seed + args.cases - 1}; {len(unmade)} mutations onnx "
        f"could not build skipped) in {elapsed:.0f} s "
        f"with {args.workers} worker(s): {scored} scored, {len(results) - scored - len(failed)} refused cleanly, "
        f"{len(failed)} failures"
    )
    for kind, n in sorted(per_kind.items()):
        print(f"  {kind:28s} {n}")
    for r in failed[:50]:
        print(f"FAIL seed {r['seed']} ({r['kind']}): exit {r['exit']}: {r['error']}")
    print(f"failing cases written to {args.failures}" if failed else "no failure")


if __name__ == "__main__":
    main()
