"""Tuning databases: records round-trip through JSON, pruning keeps the best, builds apply them."""
import pytest

from lowbit_tvm.kernel import MAX_SHARED, schedule
from lowbit_tvm.codegen import cuda_target
from lowbit_tvm.ops.w4a16 import W4A16Op
from lowbit_tvm.quant import get_scheme
from lowbit_tvm.schedules.w4a16_dispatch import plan
from lowbit_tvm.tuning import database_dir, lookup, open_database, prune
from lowbit_tvm.tvm_api import Schedule, ms, structural_equal

TARGET = cuda_target("sm_90", max_shared_memory_per_block=MAX_SHARED["sm_90"])


def _record(db, op, config, seconds):
    chosen = plan(op)
    func = chosen.op.prim_func()
    sch = Schedule(func)
    assert chosen.rule.schedule(sch, TARGET, tunable=False, config=config)
    workload = db.commit_workload(ms.tir_integration._normalize_mod(func))  # pylint: disable=protected-access
    args = ms.arg_info.ArgInfo.from_prim_func(func)
    db.commit_tuning_record(ms.database.TuningRecord(sch.trace, workload, [seconds], TARGET, args))
    return sch.mod


def test_round_trip_prune_and_apply(tmp_path):
    op = W4A16Op(4096, 4096, get_scheme("w4a16-g128"), 16)
    default = plan(op).config
    other = type(default)(**{**default.__dict__, "k_inner": 2})
    db = open_database(tmp_path, create=True)
    slow = _record(db, op, default, 2e-4)
    fast = _record(db, op, other, 1e-4)
    prune(tmp_path)
    reopened = open_database(tmp_path)
    assert len(reopened.get_all_tuning_records()) == 1
    applied = lookup(reopened, plan(op).op.prim_func(), TARGET)
    assert structural_equal(applied, fast)
    assert not structural_equal(applied, slow)
    mod, _, source = schedule(op, TARGET, reopened)
    assert source == "tuned" and structural_equal(mod, fast)
    _, _, source = schedule(op.with_m(32), TARGET, reopened)
    assert source == "default"


def test_committed_sm90_database_loads_and_applies():
    db = open_database(database_dir("sm_90"))
    if db is None:
        pytest.skip("no committed sm_90 database")
    records = db.get_all_tuning_records()
    assert records
    for record in records:
        func = record.workload.mod["main"]
        assert lookup(db, func, TARGET) is not None
