"""``lowbit-tvm tune --model``: a model's tasks extracted, tuned into a merged best-only database, applied at build.

CPU only (llvm target, a very small Llama, two trials of MetaSchedule's replay-trace search); the graph with the
database applied has exactly the recorded functions replaced, and the built library's decode logits match the
untuned library's and HF transformers'.
"""
import json
from pathlib import Path

import numpy as np
import pytest

from lowbit_tvm.cli import main
from lowbit_tvm.models.config import LlamaConfig
from lowbit_tvm.models.model_tuning import (NOT_CALL_TIR, RESHAPE, SYMBOLIC, config_from_trace, model_tasks, schedule_graph,
                                           select, tune_tasks)
from lowbit_tvm.models.recipe import ModelRecipe
from lowbit_tvm.tuning import _commit_record, open_database, plan_space, prune, unscheduled
from lowbit_tvm.tvm_api import Schedule, ms, tvm

LLVM = tvm.target.Target({"kind": "llvm"})
SMALL = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                    num_key_value_heads=1, vocab_size=128, tie_word_embeddings=True)
RECIPE = ModelRecipe(SMALL, "fp32", "float32")


@pytest.fixture(scope="module")
def tasks():
    return model_tasks(RECIPE, LLVM)


@pytest.fixture(scope="module")
def tuned(tasks, tmp_path_factory):
    """A database with one tuned task, merged into a folder that already held another record."""
    folder = tmp_path_factory.mktemp("db")
    norm, other = _pick(tasks, "rms_norm*"), _pick(tasks, "silu*")
    db = open_database(folder, create=True)
    _commit_record(db, other.workload["main"], unscheduled(other.workload).trace, [5e-6], LLVM)  # an earlier record
    _commit_record(db, norm.workload["main"], unscheduled(norm.workload).trace, [1.0], LLVM)  # any candidate beats it
    results = tune_tasks([norm], LLVM, folder, trials=2, progress=False, strategy="replay-trace")
    return folder, norm, other, results


def _pick(tasks, pattern):
    chosen = select(tasks, [pattern])
    assert chosen, f"no tunable task matches {pattern}: {[t.name for t in tasks]}"
    return chosen[0]


def _records(folder: Path) -> list:
    return [json.loads(line) for line in (folder / "database_tuning_record.json").read_text().splitlines()]


def test_tasks_extracted_with_reasons(tasks):
    tunable = select(tasks)
    assert tunable and all(t.kind == "tir" and t.workload is not None for t in tunable)
    assert len({t.name for t in tasks}) == len(tasks)
    reasons = {t.skip for t in tasks if t.skip}
    assert {SYMBOLIC, RESHAPE, NOT_CALL_TIR} <= reasons  # prefill's sequence length; views; the KV cache's kernels
    assert any(t.name.startswith("batch_decode_paged_kv") and t.skip == NOT_CALL_TIR for t in tasks)
    names = {t.name for t in tunable}
    assert any(n.startswith("rms_norm") for n in names) and any(n.startswith("matmul_nt") for n in names)
    assert select(tasks, ["no-such-task*"]) == []


def test_database_merged_best_kept(tuned):
    folder, norm, other, results = tuned
    ((task, best),) = results
    assert task is norm and best is not None and 0 < best < 1e6  # microseconds, beats the 1 s record
    records = _records(folder)
    assert len(records) == 2  # one per workload: the earlier one kept, the tuned one replaced the slow record
    db = open_database(folder)
    assert db.has_workload(norm.workload) and db.has_workload(other.workload)
    (top,) = db.get_top_k(db.commit_workload(norm.workload), 1)
    assert float(np.mean([float(t) for t in top.run_secs])) < 0.5
    before = sorted(r[1][1] for r in records)
    _commit_record(open_database(folder), norm.workload["main"], unscheduled(norm.workload).trace, [2.0], LLVM)
    prune(folder)  # a worse record for the same workload does not replace the better one
    assert sorted(r[1][1] for r in _records(folder)) == before


def test_build_applies_database_same_logits(tuned, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    from lowbit_tvm import load  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.models.builder import graph, save_model  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.models.hf_reference import hf_llama_from  # pylint: disable=import-outside-toplevel

    folder, norm, other, _ = tuned
    marked = []
    for database, applied in ((None, 0), (open_database(folder), 2)):
        model, mod, _ = graph(RECIPE, LLVM)
        scheduled, sources = schedule_graph(mod, model, LLVM, database)
        assert sources.from_database == applied and sources.by_default > 10
        marked.append({g.name_hint for g, f in scheduled.functions_items()
                       if isinstance(f, tvm.tirx.PrimFunc) and f.attrs and f.attrs.get("tirx.is_scheduled", False)})
    assert marked[1] - marked[0] == {norm.name, other.name}  # (the KV cache's kernels come scheduled)
    rng = np.random.default_rng(7)
    names = transformers.LlamaForCausalLM(transformers.LlamaConfig(**SMALL.to_json())).state_dict()
    weights = {n: (1.0 + 0.3 * rng.standard_normal(tuple(p.shape)) if "norm" in n
                   else 0.08 * rng.standard_normal(tuple(p.shape))).astype(np.float32)
               for n, p in names.items() if n != "lm_head.weight"}
    ids = rng.integers(0, SMALL.vocab_size, 9)
    logits = {}
    for name, database, line in (("untuned", None, "tuning database none: 0 of "), ("tuned", folder, f"{folder}: 2 of ")):
        path = save_model(tmp_path / f"{name}.so", RECIPE, weights, LLVM, database=database)
        assert line in capsys.readouterr().out
        logits[name] = _decode_logits(load(path), ids)
    with torch.no_grad():
        ref = hf_llama_from(SMALL.to_json(), weights)(torch.as_tensor(ids[None])).logits[0, -1].numpy()
    np.testing.assert_allclose(logits["tuned"], logits["untuned"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits["tuned"], ref, rtol=1e-4, atol=1e-4)


def _decode_logits(engine, ids) -> np.ndarray:
    """Logits of the last of ``ids`` from ``decode_one`` (the static functions a database tunes) after a prefill
    of the others."""
    cache = engine.new_cache(1, len(ids))
    engine._rt.add_sequence(cache, 0)  # pylint: disable=protected-access
    engine._run("prefill", cache, [0], [len(ids) - 1], engine._ids(ids[:-1], 1))  # pylint: disable=protected-access
    return engine._run("decode_one", cache, [0], [1], engine._ids(ids[-1:], 1)).reshape(-1).numpy()  # pylint: disable=protected-access


def test_config_from_trace_replays_the_sampled_knobs():
    from lowbit_tvm.kernel import default_target  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.models.model_tuning import lowbit_plan  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.ops.w4a16 import W4A16Op  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.quant import get_scheme  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.schedules.w4a16_dispatch import plan  # pylint: disable=import-outside-toplevel

    target = default_target("sm_90")
    graph_op = plan(W4A16Op(256, 512, get_scheme("w4a16-g128"))).op
    chosen = lowbit_plan(graph_op, 16)
    assert chosen.op.m == 16 and chosen.op.layout == "mma"
    func = chosen.op.prim_func()
    for seed in (1, 2):
        sch = Schedule(func, seed=seed)
        plan_space(chosen, target)(sch)  # what MetaSchedule samples when it tunes this task
        config = config_from_trace(chosen, sch.trace)
        assert config is not None
        again = chosen.rule.apply(func, target, config=config)
        tvm.ir.assert_structural_equal(again.mod, sch.mod)
    untuned = Schedule(func)
    chosen.rule.schedule(untuned, target, tunable=False, config=chosen.config)
    assert config_from_trace(chosen, untuned.trace) is None  # no decisions to read


def test_lowbit_record_applies_to_the_dynamic_graph_function():
    from lowbit_tvm.kernel import default_target  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.models.model_tuning import lowbit_plan, tuned_lowbit_function  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.ops.w4a16 import W4A16Op  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.quant import get_scheme  # pylint: disable=import-outside-toplevel
    from lowbit_tvm.schedules.w4a16_dispatch import plan  # pylint: disable=import-outside-toplevel

    target = default_target("sm_90")
    graph_op = plan(W4A16Op(256, 512, get_scheme("w4a16-g128"))).op
    chosen = lowbit_plan(graph_op, 16)
    db = ms.database.MemoryDatabase()
    assert tuned_lowbit_function(graph_op, 16, target, db) is None  # no record: the graph keeps its default
    sch = Schedule(chosen.op.prim_func(), seed=3)
    plan_space(chosen, target)(sch)
    _commit_record(db, chosen.op.prim_func(), sch.trace, [1e-5], target)
    func = tuned_lowbit_function(graph_op, 16, target, db)
    expected = chosen.rule.apply(graph_op.prim_func(), target, config=config_from_trace(chosen, sch.trace))
    assert graph_op.m is None and func.attrs["tirx.is_scheduled"]  # the graph's dynamic-M function, scheduled
    attrs = dict(func.attrs.items())
    tvm.ir.assert_structural_equal(func, expected.mod["main"].with_attrs(attrs).without_attr("global_symbol"))


@pytest.mark.parametrize("argv, message", [
    (["--model", "no-such-model"], "unknown model preset"),
    (["--model", "tiny", "--scheme", "w3a99"], "unknown quantization scheme"),
    (["--model", "tiny", "--trials", "0"], "--trials must be at least 1"),
    (["--model", "tiny", "--target", "cuda"], "no CUDA GPU was found"),
])
def test_cli_errors(argv, message, capsys, monkeypatch):
    from lowbit_tvm import codegen  # pylint: disable=import-outside-toplevel

    monkeypatch.setattr(codegen, "detect_cuda_arch", lambda: None)
    assert main(["tune", *argv]) == 2
    assert message in capsys.readouterr().err


def test_cli_lists_tasks(capsys):
    assert main(["tune", "--model", "tiny", "--scheme", "fp32", "--target", "llvm", "--list"]) == 0
    out = capsys.readouterr().out
    assert "tunable" in out and "skipped, symbolic shape" in out and "rms_norm" in out
