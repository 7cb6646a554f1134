"""The in-place settings of a deployment file: blanked in the code digest, so editing only them is not a code change."""

from __future__ import annotations

from pathlib import Path

from vastrpc.deploy.bundle import build_bundle
from vastrpc.deploy.settings import blank_settings

FILE = """\
from vastrpc import Deployment

app = Deployment("demo", "default", "v1", None, 600)  # positional, in Vast's order
other = Deployment(name="b", ttl=900, version_label="v\\u00e9")
app.configure_autoscaling(max_workers=3,
                          min_load=1000)


@app.remote(benchmark_dataset=[{"x": 2}])
async def square(x):
    return x * x
"""


def test_the_values_of_settings_are_blanked_and_nothing_else() -> None:
    out = blank_settings(FILE.encode()).decode()
    assert 'Deployment("demo", "default", …, None, …)  # positional, in Vast\'s order' in out
    assert 'Deployment(name="b", ttl=…, version_label=…)' in out
    assert "app.configure_autoscaling(max_workers=…,\n                          min_load=…)" in out
    assert "return x * x" in out and 'benchmark_dataset=[{"x": 2}]' in out


def test_a_file_that_does_not_parse_is_hashed_as_it_is() -> None:
    assert blank_settings(b"def broken(:\n") == b"def broken(:\n"


def _content_digest(tmp_path: Path, text: str) -> tuple[str, str]:
    path = tmp_path / "deploy.py"
    path.write_text(text)
    bundle = build_bundle(path)
    return bundle.digest, bundle.content_digest


def test_only_settings_edits_keep_the_content_digest(tmp_path: Path) -> None:
    digest, content = _content_digest(tmp_path, FILE)
    for old, new in [("max_workers=3", "max_workers=5"), ("600)", "1200)"), ('"v1"', '"v2"'), ("ttl=900", "ttl=1")]:
        edited = _content_digest(tmp_path, FILE.replace(old, new))
        assert edited[0] != digest and edited[1] == content, old
    for old, new in [("x * x", "x + x"), ("# positional", "# by position"), ('"demo"', '"renamed"')]:
        assert _content_digest(tmp_path, FILE.replace(old, new))[1] != content, old
