"""Bad ONNX input: clear errors from our error classes, and no output file left behind."""
import numpy as np
import pytest

from lowbit_tvm.errors import LibraryError, ModelError, UnsupportedOperatorError
from lowbit_tvm.frontend import compile_onnx, import_onnx

onnx = pytest.importorskip("onnx")
helper, numpy_helper, TensorProto = onnx.helper, onnx.numpy_helper, onnx.TensorProto


def _model(nodes, extra_inits=(), opsets=(("", 17),)):
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((32, 16)).astype(np.float32), "w")
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])],
        [weight, *extra_inits],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets], ir_version=10)


def _good(path):
    onnx.save(_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")]), str(path))
    return path


def _assert_fails_cleanly(tmp_path, model_path, error, match):
    out = tmp_path / "out" / "m.so"
    with pytest.raises(error, match=match):
        compile_onnx(model_path, out, scheme="w4a16-g32", target="llvm")
    assert not out.parent.exists() or not list(out.parent.iterdir())


def test_not_onnx(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("this is not a model\n" * 20)
    _assert_fails_cleanly(tmp_path, path, ModelError, "not a readable ONNX model|is not an ONNX model")


def test_missing_file(tmp_path):
    _assert_fails_cleanly(tmp_path, tmp_path / "nothing.onnx", ModelError, "does not exist")


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_file(tmp_path, keep):
    data = _good(tmp_path / "good.onnx").read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: int(len(data) * keep)])
    _assert_fails_cleanly(tmp_path, path, ModelError, "truncated|corrupted")


def test_unsupported_ops_are_all_listed_with_their_nodes(tmp_path):
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["a"], name="fc"),
        helper.make_node("Celu", ["a"], ["b"], name="celu_1"),
        helper.make_node("Celu", ["b"], ["c"], name="celu_2"),
        helper.make_node("FancyNorm", ["c"], ["d"], name="custom_norm", domain="com.example"),
        helper.make_node("Relu", ["d"], ["y"], name="relu"),
    ]
    path = tmp_path / "unsupported.onnx"
    onnx.save(_model(nodes, opsets=(("", 17), ("com.example", 1))), str(path))
    with pytest.raises(UnsupportedOperatorError) as info:
        compile_onnx(path, tmp_path / "m.so", target="llvm")
    assert info.value.ops == {"Celu": ["celu_1", "celu_2"], "com.example.FancyNorm": ["custom_norm"]}
    assert "Celu (nodes: celu_1, celu_2)" in str(info.value)
    assert "com.example.FancyNorm (nodes: custom_norm)" in str(info.value)
    assert not (tmp_path / "m.so").exists()


def _external(tmp_path, location: str):
    """A model whose weight lies in an external file named ``location`` (relative to the model's folder)."""
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    model = _model([helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")])
    weight = model.graph.initializer[0]
    data = weight.raw_data or numpy_helper.to_array(weight).tobytes()
    target = (folder / location) if not location.startswith("/") else __import__("pathlib").Path(location)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    weight.ClearField("raw_data")
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(len(data)))):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    path = folder / "m.onnx"
    onnx.save(model, str(path))
    return path


def test_external_data_inside_the_folder_is_read(tmp_path):
    imported = import_onnx(_external(tmp_path, "weights/w.bin"))
    assert [w.k for w in imported.graph.linears] == [32]


@pytest.mark.parametrize("location", ["../outside.bin", "sub/../../outside.bin"])
def test_external_data_outside_the_folder_is_refused(tmp_path, location):
    _assert_fails_cleanly(tmp_path, _external(tmp_path, location), ModelError, "outside the model's folder")


def test_external_data_at_an_absolute_path_is_refused(tmp_path):
    path = _external(tmp_path, str(tmp_path / "abs.bin"))
    _assert_fails_cleanly(tmp_path, path, ModelError, "absolute path")


def test_external_data_symlink_leaving_the_folder_is_refused(tmp_path):
    path = _external(tmp_path, "w.bin")
    (tmp_path / "elsewhere.bin").write_bytes((path.parent / "w.bin").read_bytes())
    (path.parent / "w.bin").unlink()
    (path.parent / "w.bin").symlink_to(tmp_path / "elsewhere.bin")
    _assert_fails_cleanly(tmp_path, path, ModelError, "outside the model's folder")


def test_truncated_external_data(tmp_path):
    path = _external(tmp_path, "w.bin")
    data = (path.parent / "w.bin").read_bytes()
    (path.parent / "w.bin").write_bytes(data[:100])
    _assert_fails_cleanly(tmp_path, path, ModelError, "shorter")


def test_existing_output_is_not_replaced(tmp_path):
    out = tmp_path / "m.so"
    out.write_bytes(b"old")
    with pytest.raises(LibraryError, match="refusing to overwrite"):
        compile_onnx(_good(tmp_path / "good.onnx"), out, target="llvm")
    assert out.read_bytes() == b"old"
    assert not (tmp_path / "m.safetensors").exists()


def test_dynamic_weight_is_kept_float_and_reported(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["w_in"], ["w_act"], name="make_weight"),
         helper.make_node("MatMul", ["x", "w_act"], ["y"], name="runtime_weight")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 32]),
         helper.make_tensor_value_info("w_in", TensorProto.FLOAT, [32, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 16])],
    )
    path = tmp_path / "dyn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), str(path))
    imported = import_onnx(path)
    assert imported.graph.linears == []
    assert imported.graph.kept_float == [("runtime_weight", "its weight is computed at run time")]
