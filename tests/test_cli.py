"""The ``lowbit-tvm`` command on a machine without a GPU: the demo runs, user errors are one clear line."""
import subprocess
import sys

import pytest

from lowbit_tvm.cli import main


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "lowbit_tvm.cli", *args], capture_output=True, text=True, check=False)


def test_help_explains_every_command():
    result = _cli("--help")
    assert result.returncode == 0
    for command in ("demo", "tune", "bench"):
        assert command in result.stdout


def test_demo_builds_a_library_and_checks_it(tmp_path):
    output = tmp_path / "demo.so"
    result = _cli("demo", "-o", str(output))
    assert result.returncode == 0, result.stderr[-2000:]
    assert output.exists() and output.with_name("demo.so.json").exists()
    assert "relative error" in result.stdout
    again = _cli("demo", "-o", str(output))
    assert again.returncode == 2
    assert "already exists; pass --overwrite" in again.stderr
    assert "Traceback" not in again.stderr


@pytest.mark.parametrize("command", ["tune", "bench"])
def test_gpu_commands_say_clearly_that_no_gpu_is_present(command, capsys):
    from lowbit_tvm.tvm_api import tvm  # pylint: disable=import-outside-toplevel

    if tvm.cuda(0).exist:
        pytest.skip("a GPU is present")
    assert main([command]) == 2
    assert "GPU" in capsys.readouterr().err


def test_bad_shape_argument_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        main(["tune", "--shapes", "4096by4096"])
    assert "shape must look like KxN" in capsys.readouterr().err


def test_build_without_a_checkpoint_names_what_is_missing(tmp_path, capsys):
    assert main(["build", "--model", "llama-2-7b", "--target", "llvm", "-o", str(tmp_path / "m.so")]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint is known for preset 'llama-2-7b'; pass a GGUF file" in err
    assert not list(tmp_path.iterdir())


def test_build_refuses_awq_for_an_unquantized_scheme(tmp_path, capsys):
    out = tmp_path / "m.so"
    assert main(["build", "--model", "smollm2-135m", "--scheme", "fp32", "--awq", "--target", "llvm", "-o", str(out)]) == 2
    assert "--awq calibrates weights for a quantized scheme; fp32" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_build_rejects_an_unknown_preset(tmp_path, capsys):
    assert main(["build", "--model", "gpt-5", "-o", str(tmp_path / "m.so")]) == 2
    assert "unknown model preset 'gpt-5'" in capsys.readouterr().err


def test_run_names_a_missing_library(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nothing.so")]) == 2
    assert "does not exist" in capsys.readouterr().err


def _tiny_onnx(path):
    import numpy as np  # pylint: disable=import-outside-toplevel

    onnx = pytest.importorskip("onnx")
    helper = onnx.helper
    weight = onnx.numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 32])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), str(path))
    return path


def test_compile_help_names_the_options(capsys):
    with pytest.raises(SystemExit) as info:
        main(["compile", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--scheme", "--target", "--keep-fp", "--calibrate", "--output", "--overwrite", "MatMulNBits"):
        assert option in out


def test_compile_writes_a_library_that_runs(tmp_path, capsys):
    import numpy as np  # pylint: disable=import-outside-toplevel

    import lowbit_tvm  # pylint: disable=import-outside-toplevel

    model = _tiny_onnx(tmp_path / "tiny.onnx")
    out = tmp_path / "tiny.so"
    assert main(["compile", str(model), "--target", "llvm", "--scheme", "w4a16-g32", "-o", str(out)]) == 0
    assert "1 of 1 linear layers on the W4A16 kernel" in capsys.readouterr().out
    y = lowbit_tvm.load(out)(np.ones((2, 64), np.float32))["y"]
    assert y.shape == (2, 32) and np.isfinite(y).all()
    assert main(["compile", str(model), "--target", "llvm", "-o", str(out)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err


def test_compile_rejects_a_file_that_is_not_onnx(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\x01garbage" * 50)
    assert main(["compile", str(bad), "--target", "llvm", "-o", str(tmp_path / "out" / "m.so")]) == 2
    err = capsys.readouterr().err
    assert "lowbit-tvm compile: error:" in err and "ONNX" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
