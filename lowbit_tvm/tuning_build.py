"""Build functions that MetaSchedule's builder workers import by reference: kept to the TVM imports alone, since
every fresh worker process pays for what this module imports (``lowbit_tvm.tuning`` pulls in all our rules)."""
from .tvm_api import s_tir, tvm


def build_plain(mod, target, _params=None):
    """MetaSchedule's default build step without its import of every TVM tensor intrinsic (tens of seconds in
    each fresh builder process; a default-space candidate's IR needs none of them registered)."""
    mod = s_tir.transform.RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm.tirx.build(mod, target=target)
