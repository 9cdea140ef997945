"""Reliability of the compression step's outputs: exact bundle names per ratio, bundle folders never replaced
silently nor left half-written, and work folders that know which run they belong to (fingerprint, lock)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, TINY
from ignite.engine import Engine
from torch import nn

from custom_modules.networks import RAAGR2Net
from raagr2_tools.compression import bundle_writer
from raagr2_tools.compression.bundle_writer import (
    check_bundle_target,
    pruned_bundle_name,
    remove_staging_leftovers,
    write_pruned_bundle,
)
from raagr2_tools.compression.loop import FINGERPRINT_FILE, work_folder_lock
from raagr2_tools.compression.settings import FineTuneSettings, PruningSettings, ReportSettings
from raagr2_tools.compression.step import CompressionStep

PRUNED = REPO_ROOT / "bundles" / "raagr2_pruned"
FEATURES = tuple(TINY["network_def#features"])


# ----------------------------------------------------------------------------------------------------------
# 1. the bundle name carries the exact ratio


@pytest.mark.parametrize(
    ("method", "ratio", "variant", "name"),
    [
        ("taylor", 0.3, "baseline", "raagr2_pruned_taylor_30"),
        ("taylor", 0.304, "baseline", "raagr2_pruned_taylor_30p4"),
        ("taylor", 0.3333, "baseline", "raagr2_pruned_taylor_33p33"),
        ("depgraph", 0.5, "baseline", "raagr2_pruned_depgraph_50"),
        ("snip", 0.5, "shared_depthwise", "raagr2_pruned_snip_50_shared"),
        ("magnitude_l1", 0.35, "baseline", "raagr2_pruned_magnitude_l1_35"),
        ("depgraph", 0.305, "shared_depthwise", "raagr2_pruned_depgraph_30p5_shared"),
        ("depgraph", 0.005, "baseline", "raagr2_pruned_depgraph_0p5"),
    ],
)
def test_bundle_name_carries_the_exact_ratio(method: str, ratio: float, variant: str, name: str) -> None:
    assert pruned_bundle_name(method, ratio, variant) == name


def test_ratios_that_differ_get_different_names_and_unnameable_ratios_are_refused() -> None:
    names = {pruned_bundle_name("taylor", r) for r in (0.3, 0.304, 0.3004, 0.31, 0.3333)}
    assert len(names) == 5
    with pytest.raises(ValueError) as err:
        pruned_bundle_name("taylor", 0.33333)
    message = str(err.value)
    assert "\n" not in message and "ratio" in message and "0.33333" in message and "0.3333" in message


# ----------------------------------------------------------------------------------------------------------
# 2. bundle folders: refused when they exist, replaced only with overwrite, never half-written


def _report(ratio: float = 0.3) -> dict:
    dice = {"wt": 0.9, "tc": 0.8, "et": 0.7}
    return {
        "bundle": "raagr2_pruned_depgraph_30",
        "method": "depgraph",
        "criterion_reference": "Fang et al., CVPR 2023",
        "ratio": ratio,
        "schedule": "oneshot",
        "allocation": "uniform",
        "variant": "baseline",
        "teacher": "teacher.pt",
        "flop_counter": "FlopCounterMode (FLOPs = 2 x MACs)",
        "input_shape": [1, 4, 32, 32],
        "complexity": {
            "teacher": {"params": 100, "nonzero_params": 100, "flops": 2_000_000},
            "pruned": {"params": 50, "nonzero_params": 50, "flops": 1_000_000},
        },
        "layers": [],
        "eval_split": "test",
        "cases": ["a"],
        "dice": {"teacher": dice, "pruned_before_finetune": dice, "finetuned": dice},
        "hd95": {"teacher": dice, "pruned_before_finetune": dice, "finetuned": dice},
        "steps": [],
        "snip": None,
        "finetune": {"epochs_per_step": 1, "distillation": True, "alpha": 0.5, "temperature": 2.0, "feature_weight": 0},
    }


def _write(bundle_dir: Path, value: float, overwrite: bool = False) -> Path:
    return write_pruned_bundle(
        template_dir=PRUNED,
        bundle_dir=bundle_dir,
        network_config={"_target_": "custom_modules.networks.RAAGR2Net", "features": list(FEATURES)},
        pruning_history=[],
        state_dict={"w": torch.full((3,), value)},
        report=_report(),
        overwrite=overwrite,
    )


def _weights(bundle_dir: Path) -> float:
    return float(torch.load(bundle_dir / "models" / "model.pt", weights_only=True)["w"][0])


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_write_refuses_an_existing_bundle_and_replaces_it_only_with_overwrite(tmp_path: Path) -> None:
    bundle = tmp_path / "raagr2_pruned_depgraph_30"
    _write(bundle, 1.0)
    with pytest.raises(FileExistsError) as err:
        _write(bundle, 2.0)
    message = str(err.value)
    assert "\n" not in message and str(bundle) in message
    assert "output_dir" in message and "overwrite" in message and "--overwrite true" in message
    assert _weights(bundle) == 1.0, "the refused write changed the existing bundle"

    _write(bundle, 3.0, overwrite=True)
    assert _weights(bundle) == 3.0
    assert (bundle / "configs" / "metadata.json").is_file() and (bundle / "docs" / "compression_report.md").is_file()
    assert _hidden(tmp_path) == [], "staging or replaced folders were left beside the bundle"

    empty = tmp_path / "empty"
    empty.mkdir()  # an empty folder holds nothing to lose
    _write(empty, 4.0)
    assert _weights(empty) == 4.0


def test_a_failed_write_leaves_no_bundle_or_the_old_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing the report")

    monkeypatch.setattr(bundle_writer, "write_compression_report", killed)
    bundle = tmp_path / "raagr2_pruned_depgraph_30"
    with pytest.raises(KeyboardInterrupt):
        _write(bundle, 1.0)
    assert not bundle.exists(), "a partial bundle was left behind"
    assert _hidden(tmp_path) == []

    monkeypatch.undo()
    _write(bundle, 1.0)
    monkeypatch.setattr(bundle_writer, "write_compression_report", killed)
    with pytest.raises(KeyboardInterrupt):
        _write(bundle, 2.0, overwrite=True)
    assert _weights(bundle) == 1.0 and (bundle / "docs" / "compression_report.json").is_file()
    assert _hidden(tmp_path) == []


def test_staging_leftovers_of_a_killed_write_are_cleaned_up(tmp_path: Path) -> None:
    name = "raagr2_pruned_depgraph_30"
    staging = tmp_path / f".{name}.staging-4242"
    (staging / "models").mkdir(parents=True)
    (staging / "models" / "model.pt").write_bytes(b"partial")
    old = tmp_path / f".{name}.old-4242"  # killed between moving the old bundle aside and renaming the new in
    (old / "configs").mkdir(parents=True)
    (old / "configs" / "metadata.json").write_text("{}")
    other = tmp_path / ".raagr2_pruned_depgraph_30p4.staging-4242"  # another bundle's: not this one's business
    other.mkdir()
    handled = remove_staging_leftovers(tmp_path, name)
    assert sorted(p.name for p in handled) == sorted([staging.name, old.name])
    assert not staging.exists() and not old.exists() and other.exists()
    assert (tmp_path / name / "configs" / "metadata.json").is_file(), "the complete old bundle was not put back"


def test_check_bundle_target(tmp_path: Path) -> None:
    check_bundle_target(tmp_path / "missing")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(FileExistsError):
        check_bundle_target(tmp_path / "full")
    check_bundle_target(tmp_path / "full", overwrite=True)


# ----------------------------------------------------------------------------------------------------------
# the step, built in this process with plain Ignite engines (nothing runs: every check is in the constructor)


@pytest.fixture()
def inputs(tmp_path: Path) -> dict[str, Path]:
    torch.manual_seed(0)
    teacher = tmp_path / "inputs" / "teacher.pt"
    teacher.parent.mkdir()
    torch.save(RAAGR2Net(out_channels=3, sigmoid=False, features=FEATURES).state_dict(), teacher)
    datalist = tmp_path / "inputs" / "datalist.json"
    datalist.write_text(json.dumps({"training": [{"image": ["a.nii.gz"], "label": "a_seg.nii.gz"}]}))
    return {"teacher": teacher, "datalist": datalist, "output_dir": tmp_path / "out"}


def _step(
    inputs: dict[str, Path], overwrite: bool | str = False, onnx_check: bool = True, **finetune
) -> CompressionStep:
    """The step of a magnitude_l1 run at ratio 0.3 (``finetune``: :class:`FineTuneSettings` fields)."""
    network = RAAGR2Net(out_channels=3, sigmoid=False, features=FEATURES)
    engines = {which: Engine(lambda engine, batch: None) for which in ("teacher", "student")}
    return CompressionStep(
        network=network,
        teacher=network,
        trainer=Engine(lambda engine, batch: None),
        optimizer=torch.optim.SGD(network.parameters(), lr=0.01),
        evaluators=engines,
        task_loss=nn.MSELoss(),
        pruning=PruningSettings(method="magnitude_l1", ratio=0.3, example_size=(32, 32), onnx_check=onnx_check),
        finetune=FineTuneSettings(**{"epochs": 1, **finetune}),
        report=ReportSettings(),
        variant="baseline",
        teacher_ckpt=str(inputs["teacher"]),
        bundle_root=str(PRUNED),
        output_dir=str(inputs["output_dir"]),
        overwrite=overwrite,
        datalist=str(inputs["datalist"]),
    )


def _fake_progress(step: CompressionStep) -> None:
    """A finished step's resume record, as a killed run leaves it."""
    step.lock.release()
    torch.save({"progress": "{}"}, step.work_dir / "progress.pt")


def test_step_refuses_an_existing_bundle_before_any_work(inputs: dict[str, Path]) -> None:
    bundle = inputs["output_dir"] / "raagr2_pruned_magnitude_l1_30"
    (bundle / "models").mkdir(parents=True)
    (bundle / "models" / "model.pt").write_bytes(b"an hour of work")
    for overwrite in (False, "false"):
        with pytest.raises(FileExistsError) as err:
            _step(inputs, overwrite=overwrite)
        message = str(err.value)
        assert "\n" not in message and str(bundle) in message and "--overwrite true" in message
    assert not (inputs["output_dir"] / "raagr2_pruned_magnitude_l1_30.work").exists()
    step = _step(inputs, overwrite="true")  # as `--overwrite true` reaches the config: text
    assert step.overwrite is True
    step.lock.release()
    assert (bundle / "models" / "model.pt").read_bytes() == b"an hour of work", "replaced before the run ended"
    with pytest.raises(ValueError, match="config key overwrite"):
        _step(inputs, overwrite="maybe")


def test_step_cleans_staging_leftovers_at_start(inputs: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    staging = inputs["output_dir"] / ".raagr2_pruned_magnitude_l1_30.staging-4242"
    staging.mkdir(parents=True)
    (staging / "half.json").write_text("{")
    with caplog.at_level(logging.WARNING):
        _step(inputs).lock.release()
    assert not staging.exists()
    assert any(str(staging) in r.getMessage() for r in caplog.records), "the clean-up was not logged"


# ----------------------------------------------------------------------------------------------------------
# 3. the work folder knows its run: fingerprint and lock


def test_resume_under_other_settings_or_inputs_is_refused(inputs: dict[str, Path]) -> None:
    step = _step(inputs)
    work = step.work_dir
    recorded = json.loads((work / FINGERPRINT_FILE).read_text())
    assert recorded["settings"]["finetune"]["epochs"] == 1 and len(recorded["teacher_ckpt_sha256"]) == 64
    assert recorded["data_list_file_path_sha256"] is not None
    _fake_progress(step)

    _step(inputs).lock.release()  # the same settings and inputs resume
    _step(inputs, onnx_check=False).lock.release()  # a check only: not part of the result

    def refused(**changes) -> str:
        with pytest.raises(RuntimeError) as err:
            _step(inputs, **changes)
        message = str(err.value)
        assert "\n" not in message and str(work) in message and f"delete {work}" in message
        return message

    assert "settings.finetune.epochs was 1, now 2" in refused(epochs=2)
    assert "settings.finetune.kd_alpha was 0.5, now 0.7" in refused(kd_alpha=0.7)

    original = inputs["teacher"].read_bytes()
    torch.manual_seed(1)
    torch.save(RAAGR2Net(out_channels=3, sigmoid=False, features=FEATURES).state_dict(), inputs["teacher"])
    assert "teacher_ckpt_sha256 was" in refused()
    inputs["teacher"].write_bytes(original)

    inputs["datalist"].write_text(json.dumps({"training": []}))
    assert "data_list_file_path_sha256 was" in refused()


def test_work_without_fingerprint_is_refused_and_empty_work_is_claimed(inputs: dict[str, Path]) -> None:
    work = inputs["output_dir"] / "raagr2_pruned_magnitude_l1_30.work"
    work.mkdir(parents=True)
    (work / FINGERPRINT_FILE).write_text(json.dumps({"from": "another run that never finished a step"}))
    _step(inputs, epochs=3).lock.release()  # no finished step: nothing to lose, the fingerprint is this run's
    assert json.loads((work / FINGERPRINT_FILE).read_text())["settings"]["finetune"]["epochs"] == 3

    (work / FINGERPRINT_FILE).unlink()
    torch.save({"progress": "{}"}, work / "progress.pt")  # an older raagr2-slim's work
    with pytest.raises(RuntimeError, match=f"recorded no {FINGERPRINT_FILE}.*delete"):
        _step(inputs, epochs=3)


HOLD_LOCK = textwrap.dedent(
    """
    import os, sys, time
    from raagr2_tools.compression.loop import work_folder_lock
    lock = work_folder_lock(sys.argv[1])
    lock.acquire()
    if sys.argv[2] == "fork":
        child = os.fork()
        if child == 0:  # a DataLoader worker: outlives its killed parent for a while
            time.sleep(60)
            os._exit(0)
        print(child, flush=True)
    print("locked", flush=True)
    time.sleep(60)
    """
)


def _hold(work: Path, mode: str = "plain") -> tuple[subprocess.Popen, list[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(work), mode], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT
    )
    lines = []
    while not lines or lines[-1] != "locked":
        line = proc.stdout.readline()
        assert line, "the lock holder ended early"
        lines.append(line.strip())
    return proc, lines


def test_a_second_run_in_the_same_work_folder_is_refused(inputs: dict[str, Path]) -> None:
    work = inputs["output_dir"] / "raagr2_pruned_magnitude_l1_30.work"
    proc, _ = _hold(work)
    try:
        with pytest.raises(RuntimeError) as err:
            _step(inputs)
        message = str(err.value)
        assert "\n" not in message and str(work) in message and f"pid {proc.pid}" in message
        assert "output_dir" in message
    finally:
        proc.kill()
        proc.wait()
    _step(inputs).lock.release()  # the kernel dropped the killed holder's lock

    first = _step(inputs)  # the same in one process: two runs, two locks
    with pytest.raises(RuntimeError, match=f"pid {os.getpid()}"):
        _step(inputs)
    first.lock.release()
    _step(inputs).lock.release()


def test_forked_workers_of_a_killed_run_do_not_hold_its_lock(tmp_path: Path) -> None:
    work = tmp_path / "x.work"
    proc, lines = _hold(work, "fork")
    worker = int(lines[0])
    try:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        os.kill(worker, 0)  # the forked worker still runs
        lock = work_folder_lock(work)
        lock.acquire()
        lock.release()
    finally:
        try:
            os.kill(worker, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ----------------------------------------------------------------------------------------------------------
# the real command line: a second ratio gets its own bundle, an existing one is refused before the work


@pytest.mark.e2e
def test_cli_keeps_each_ratio_and_refuses_an_existing_bundle(phantom_dataset, tmp_path: Path) -> None:
    from raagr2_tools.jobs.bundle_cli import bundle_command

    torch.manual_seed(0)
    teacher = tmp_path / "teacher.pt"
    torch.save(RAAGR2Net(out_channels=3, sigmoid=False, features=FEATURES).state_dict(), teacher)
    out = tmp_path / "out"
    earlier = out / "raagr2_pruned_magnitude_l1_30"  # the ratio-0.3 result of an earlier run
    (earlier / "models").mkdir(parents=True)
    (earlier / "models" / "model.pt").write_bytes(b"ratio 0.3")
    dataset_dir, datalist = phantom_dataset
    overrides = {
        **TINY,
        "bundle_root": PRUNED,
        "dataset_dir": dataset_dir,
        "data_list_file_path": datalist,
        "teacher_ckpt": teacher,
        "output_dir": out,
        "epochs": 1,
        "measure_latency": False,
        "onnx_check": False,
        "method": "magnitude_l1",
        "ratio": 0.304,
        "schedule": "oneshot",
    }
    command = bundle_command([PRUNED / "configs" / "train.json", PRUNED / "configs" / "compress.json"], "compress")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def compress(**extra) -> subprocess.CompletedProcess:
        args = command + [a for k, v in {**overrides, **extra}.items() for a in (f"--{k}", str(v))]
        return subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)

    result = compress()
    assert result.returncode == 0, result.stderr[-3000:]
    bundle = out / "raagr2_pruned_magnitude_l1_30p4"
    assert (bundle / "models" / "model.pt").is_file()
    assert (earlier / "models" / "model.pt").read_bytes() == b"ratio 0.3" and not (earlier / "configs").exists()
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["compression"]["ratio"] == 0.304 and "30.4%" in meta["name"]

    stamp = (bundle / "models" / "model.pt").stat().st_mtime_ns
    result = compress()
    assert result.returncode != 0
    lines = [line for line in (result.stdout + result.stderr).splitlines() if str(bundle) in line]
    assert any("already exists" in line and "--overwrite true" in line for line in lines), result.stderr[-3000:]
    assert "teacher: Dice" not in result.stdout + result.stderr, "the refused run started its work"
    assert (bundle / "models" / "model.pt").stat().st_mtime_ns == stamp

    result = compress(overwrite="true")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming raagr2_pruned_magnitude_l1_30p4 after step 1" in result.stdout + result.stderr
    assert (bundle / "models" / "model.pt").stat().st_mtime_ns != stamp
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "staging folders were left behind"
