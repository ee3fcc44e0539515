import json

import pytest

from batch.outputs import MANIFEST, OutputDir, image_name, prepare_output, write_gallery
from ray_diffusion.errors import ConfigError


def row(file, data, index=0):
    import hashlib

    return {"file": file, "sha256": hashlib.sha256(data).hexdigest(), "index": index, "prompt": "<b>p</b>",
            "seed": 1, "steps": 2, "guidance_scale": 7.5}


def test_image_names():
    assert image_name(42, 0, 1, 5) == "images/00042.png"
    assert image_name(42, 2, 3, 6) == "images/000042-2.png"


def test_atomic_write_leaves_no_temp_files(tmp_path):
    out = OutputDir(str(tmp_path / "o"))
    out.write_atomic("images/a.png", b"abc")
    assert (tmp_path / "o/images/a.png").read_bytes() == b"abc"
    assert [p.name for p in (tmp_path / "o/images").iterdir()] == ["a.png"]


def test_fresh_job_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="not empty; pass --resume"):
        prepare_output(OutputDir(str(tmp_path / "o")), False, "fp", {})


def test_resume_verifies_rows_drops_corrupt_and_torn_lines_and_cleans_temps(tmp_path):
    out = OutputDir(str(tmp_path / "o"))
    prepare_output(out, False, "fp", {"a": 1})
    out.write_atomic("images/0.png", b"zero")
    out.write_atomic("images/1.png", b"one")
    out.append_manifest([row("images/0.png", b"zero", 0), row("images/1.png", b"one", 1),
                         row("images/2.png", b"two", 2)])
    out.close()
    (tmp_path / "o/images/1.png").write_bytes(b"corrupt")
    (tmp_path / "o/images/3.png.tmp-deadbeef").write_bytes(b"partial")
    with open(tmp_path / "o" / MANIFEST, "ab") as f:
        f.write(b'{"file": "images/3.png", "sha2')  # a torn last write
    out2 = OutputDir(str(tmp_path / "o"))
    done = prepare_output(out2, True, "fp", {"a": 1})
    out2.close()
    assert sorted(done) == ["images/0.png"]
    assert not (tmp_path / "o/images/3.png.tmp-deadbeef").exists()
    lines = (tmp_path / "o" / MANIFEST).read_text().splitlines()
    assert [json.loads(line)["file"] for line in lines] == ["images/0.png"]


def test_resume_with_changed_config_is_refused_naming_the_change(tmp_path):
    out = OutputDir(str(tmp_path / "o"))
    prepare_output(out, False, "fp1", {"steps": 4, "model": "m"})
    out.close()
    with pytest.raises(ConfigError, match="changed: steps"):
        prepare_output(OutputDir(str(tmp_path / "o")), True, "fp2", {"steps": 5, "model": "m"})


def test_resume_refuses_a_directory_it_did_not_write(tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "other.txt").write_text("x")
    with pytest.raises(ConfigError, match="not written by a batch job"):
        prepare_output(OutputDir(str(tmp_path / "o")), True, "fp", {})


def test_fsspec_memory_filesystem_rewrites_the_manifest(tmp_path):
    out = OutputDir("memory://job-outputs-test")
    prepare_output(out, False, "fp", {})
    assert not out.is_local
    out.write_atomic("images/0.png", b"zero")
    out.append_manifest([row("images/0.png", b"zero")])
    out.write_atomic("images/1.png", b"one")
    out.append_manifest([row("images/1.png", b"one", 1)])
    rows, bad = out.read_manifest()
    assert [r["file"] for r in rows] == ["images/0.png", "images/1.png"] and bad == 0
    shown = out.display("index.html")
    assert shown.startswith("memory://") and shown.endswith("job-outputs-test/index.html")
    out.fs.rm("/job-outputs-test", recursive=True)


def test_gallery_escapes_prompts_and_links_every_image(tmp_path):
    out = OutputDir(str(tmp_path / "o"))
    path = write_gallery(out, [row("images/0.png", b"x"), row("images/1.png", b"y", 1)], "t")
    page = open(path).read()
    assert page.count("<figure>") == 2
    assert "&lt;b&gt;p&lt;/b&gt;" in page and "<b>p</b>" not in page
    assert 'src="images/1.png"' in page
    assert "http" not in page  # self-contained: no external assets
