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


def test_build_rejects_an_unknown_preset(tmp_path, capsys):
    assert main(["build", "--model", "gpt-5", "-o", str(tmp_path / "m.so")]) == 2
    assert "unknown model preset 'gpt-5'" in capsys.readouterr().err


def test_run_names_a_missing_library(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nothing.so")]) == 2
    assert "does not exist" in capsys.readouterr().err
