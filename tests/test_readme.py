"""The README's example runs as written (in a scratch directory)."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
  return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_the_make_private_example():
  assert any("dpjax.make_private" in block for block in python_blocks())


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_example_runs(index, tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  exec(compile(python_blocks()[index], f"README.md python block {index}", "exec"), {})
  out = capsys.readouterr().out
  if "make_private" in python_blocks()[index]:
    assert "epsilon" in out
    assert (tmp_path / "runs" / "readme" / "privacy_report.json").exists()
