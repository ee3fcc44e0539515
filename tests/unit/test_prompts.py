import pytest

from batch.prompts import parse_prompts, warn_long_prompts
from ray_diffusion.errors import InputFileError
from ray_diffusion.seeds import derive_seed

DEFAULTS = {"num_inference_steps": 4, "guidance_scale": 7.5, "height": None, "width": None, "negative_prompt": None}


def parse(name, text, **kw):
    return parse_prompts(name, text.encode(), DEFAULTS, job_seed=7, **kw)


def test_txt_skips_blank_lines_and_comments_and_derives_seeds():
    pf = parse("p.txt", "# header\n\na fox\n  a boat  \n# more\nthird\n")
    assert [i.request.prompt for i in pf.items] == ["a fox", "a boat", "third"]
    assert [i.line for i in pf.items] == [3, 4, 6]
    assert [i.request.seed for i in pf.items] == [derive_seed(7, i) for i in range(3)]
    assert [i.request.request_id for i in pf.items] == ["0", "1", "2"]
    assert len(pf.sha256) == 64


def test_jsonl_rows_override_defaults():
    pf = parse(
        "p.jsonl",
        '{"prompt": "a", "seed": 5, "steps": 2, "height": 32, "width": 48, "id": "x1"}\n\n'
        '{"prompt": "b", "negative_prompt": "blur", "guidance_scale": 1.5}\n',
    )
    a, b = pf.items
    assert (a.request.seed, a.request.num_inference_steps, a.request.height, a.request.width, a.item_id) == (
        5, 2, 32, 48, "x1")
    assert (b.request.negative_prompt, b.request.guidance_scale, b.request.num_inference_steps) == ("blur", 1.5, 4)
    assert b.line == 3


def test_csv_with_optional_columns_and_empty_cells():
    pf = parse("p.csv", "prompt,seed,steps,id\na cat,3,,c1\n\"a, quoted\",,6,\n")
    a, b = pf.items
    assert (a.request.prompt, a.request.seed, a.request.num_inference_steps, a.item_id) == ("a cat", 3, 4, "c1")
    assert (b.request.prompt, b.request.seed, b.request.num_inference_steps) == ("a, quoted", derive_seed(7, 1), 6)
    assert b.line == 3


def test_images_per_prompt_is_set_on_every_request():
    pf = parse("p.txt", "a\nb\n", images_per_prompt=3)
    assert {i.request.num_images for i in pf.items} == {3}


@pytest.mark.parametrize(
    "name, text, line, message",
    [
        ("p.jsonl", '{"prompt": "ok"}\n{"prompt": "x",\n', 2, "malformed JSON"),
        ("p.jsonl", '{"prompt": "ok"}\n["a list"]\n', 2, "expected a JSON object"),
        ("p.jsonl", '{"negative_prompt": "x"}\n', 1, "missing 'prompt'"),
        ("p.jsonl", '{"prompt": "x", "steps": 0}\n', 1, "num_inference_steps: must be 1..150"),
        ("p.jsonl", '{"prompt": "x", "colour": "red"}\n', 1, "unknown field"),
        ("p.jsonl", '{"prompt": "   "}\n', 1, "prompt: must not be empty"),
        ("p.jsonl", '{"prompt": "x", "height": 63}\n', 1, "height: must be a multiple of 8"),
        ("p.csv", "prompt,seed\na,1\nb,abc\n", 3, "bad number in 'seed'"),
        ("p.csv", "prompt,colour\na,red\n", 1, "unknown column"),
        ("p.csv", "text,seed\na,1\n", 1, "needs a 'prompt' column"),
        ("p.csv", "prompt\na,b\n", 2, "more cells than header"),
        ("p.txt", "\n# only comments\n\n", 0, "no prompts found"),
        ("p.txt", "", 0, "no prompts found"),
        ("p.yaml", "prompt: x\n", 0, "unsupported prompt file type"),
    ],
)
def test_bad_rows_name_file_and_line(name, text, line, message):
    with pytest.raises(InputFileError, match=message) as info:
        parse(name, text)
    assert info.value.source == name
    assert info.value.line == line
    if line:
        assert str(info.value).startswith(f"{name}:{line}: ")


def test_non_utf8_is_an_input_error():
    with pytest.raises(InputFileError, match="not UTF-8"):
        parse_prompts("p.txt", b"\xff\xfe\x00bad", DEFAULTS, 0)


def test_long_prompt_is_a_warning_not_an_error(tiny_model_dir):
    pf = parse("p.txt", "short\n" + "word " * 100 + "\n")
    warnings = warn_long_prompts(pf, str(tiny_model_dir))
    assert len(warnings) == 1 and warnings[0].startswith("p.txt:2: prompt is ")
    assert len(pf.items) == 2


def test_prompt_file_from_an_fsspec_url():
    import fsspec

    from batch.prompts import read_prompt_file

    fs = fsspec.filesystem("memory")
    fs.pipe_file("/prompts-url-test/p.jsonl", b'{"prompt": "from a URL", "seed": 3}\n')
    try:
        pf = read_prompt_file("memory://prompts-url-test/p.jsonl", DEFAULTS, job_seed=0)
        assert [(i.request.prompt, i.request.seed) for i in pf.items] == [("from a URL", 3)]
        with pytest.raises(InputFileError, match="file not found"):
            read_prompt_file("memory://prompts-url-test/missing.txt", DEFAULTS, job_seed=0)
    finally:
        fs.rm("/prompts-url-test", recursive=True)
