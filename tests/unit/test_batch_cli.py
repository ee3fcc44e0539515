import subprocess
import sys

import pytest

from batch.cli import main, resolve_config, build_parser
from batch.driver import FleetPlan, compress_ranges, plan_fleet
from batch.config import BatchJobConfig
from ray_diffusion.errors import ConfigError


def test_help_is_fast_and_imports_neither_torch_nor_ray():
    code = (
        "import sys\n"
        "from batch.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules and 'ray' not in sys.modules, 'heavy import'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--prompts" in proc.stdout and "--no-steal" in proc.stdout


def test_yaml_config_and_flags_merge_with_flags_winning(tmp_path):
    cfg_file = tmp_path / "job.yaml"
    cfg_file.write_text("model: /models/a\nsteps: 12\nbatch-size: 8\ndtype: bfloat16\nprompts: p.txt\noutput: o\n")
    args = build_parser().parse_args(["--config", str(cfg_file), "--steps", "3", "--no-steal"])
    cfg = resolve_config(args)
    assert (cfg.model, cfg.steps, cfg.batch_size, cfg.steal) == ("/models/a", 3, 8, False)
    assert (cfg.worker.dtype, cfg.worker.max_batch_size) == ("bfloat16", 8)


def test_bad_yaml_names_the_line(tmp_path):
    cfg_file = tmp_path / "job.yaml"
    cfg_file.write_text("model: a\nsteps: [1,\n")
    with pytest.raises(ConfigError, match=r"job.yaml:\d+: invalid YAML"):
        resolve_config(build_parser().parse_args(["--config", str(cfg_file)]))


def test_unknown_yaml_key_is_named(tmp_path):
    cfg_file = tmp_path / "job.yaml"
    cfg_file.write_text("prompts: p.txt\noutput: o\nstepz: 3\n")
    with pytest.raises(ConfigError, match="stepz: unknown field"):
        resolve_config(build_parser().parse_args(["--config", str(cfg_file)]))


def test_missing_required_options_exit_2(capsys, tmp_path):
    assert main(["--model", "m", "--output", str(tmp_path / "o")]) == 2
    assert "prompts: required" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content, name, where",
    [
        ('{"prompt": "ok"}\n{"prompt": \n', "bad.jsonl", ":2:"),
        ("prompt,seed\nx,notanumber\n", "bad.csv", ":2:"),
        ("\n\n", "empty.txt", "empty.txt: no prompts"),
    ],
)
def test_bad_input_exits_2_naming_file_line_and_writes_nothing(tmp_path, capsys, content, name, where):
    prompts = tmp_path / name
    prompts.write_text(content)
    out = tmp_path / "out"
    assert main(["--model", "fake://", "--prompts", str(prompts), "--output", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert where in err and err.startswith("error: ")
    assert not out.exists()


def test_non_empty_output_without_resume_exits_2(tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "x").write_text("keep me")
    assert main(["--model", "fake://", "--prompts", str(prompts), "--output", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (out / "x").read_text() == "keep me" and len(list(out.iterdir())) == 1


def test_plan_fleet_one_worker_per_gpu_and_cpu_fallback():
    cfg = BatchJobConfig.from_flat({"prompts": "p", "output": "o"})
    assert plan_fleet(cfg, {"GPU": 4, "CPU": 8}) == FleetPlan(4, 1.0, 0.0, 2, "")
    two = BatchJobConfig.from_flat({"prompts": "p", "output": "o", "gpus_per_worker": 2})
    assert plan_fleet(two, {"GPU": 4, "CPU": 8}).num_workers == 2
    cpu = plan_fleet(cfg, {"CPU": 4})
    assert (cpu.num_workers, cpu.num_gpus) == (2, 0.0) and "no GPUs" in cpu.notice
    # a joined cluster with an explicit worker count asks for GPUs and lets the autoscaler add them
    four = BatchJobConfig.from_flat({"prompts": "p", "output": "o", "num_workers": 4})
    scaled = plan_fleet(four, {"CPU": 4}, can_autoscale=True)
    assert (scaled.num_workers, scaled.num_gpus) == (4, 1.0) and "autoscaler" in scaled.notice
    assert plan_fleet(four, {"CPU": 4}, can_autoscale=False).num_gpus == 0.0
    silent = plan_fleet(BatchJobConfig.from_flat({"prompts": "p", "output": "o", "gpus_per_worker": 0}), {"CPU": 4})
    assert silent.notice == ""
    assert two.worker.num_gpus == 2


def test_compress_ranges():
    assert compress_ranges([7, 1, 2, 3, 9, 10]) == "1-3, 7, 9-10"
