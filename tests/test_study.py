"""The compression study (benchmarks.study): plan checks, same-budget narrow controls, and an end-to-end run
on phantoms that is killed with SIGKILL and resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.study.plan import load_plan
from benchmarks.study.runner import Study, narrow_features
from custom_modules.networks import RAAGR2Net, count_parameters

REPO = Path(__file__).resolve().parents[1]
TINY_PLAN = REPO / "tests" / "configs" / "study_tiny.json"


def _plan(tmp_path: Path, **changes) -> Path:
    raw = json.loads(TINY_PLAN.read_text())
    raw.update(changes)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(raw))
    return path


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"compressed": [{"method": "lrp", "ratio": 0.5}]}, r"compressed\[0\]' method 'lrp'"),
        ({"compressed": [{"method": "taylor", "ratio": 1.5}]}, r"compressed\[0\]' ratio must be in \(0, 1\)"),
        (
            {"compressed": [{"method": "taylor", "ratio": 0.5, "schedule": "levelwise"}]},
            "levelwise schedule has steps 5",
        ),
        ({"narrow_reference": "nope"}, r"'narrow_reference' 'nope' is not one of"),
        (
            {"compressed": [{"method": "taylor", "ratio": 0.5, "schedule": "iterative", "steps": 2}]},
            "not divisible by the 2 steps",
        ),
    ],
)
def test_plan_errors_name_file_and_key(tmp_path: Path, changes: dict, message: str) -> None:
    if "narrow_reference" not in changes and "compressed" in changes:
        spec = changes["compressed"][0]
        changes["narrow_reference"] = (
            f"baseline_{spec['method']}_{round(100 * spec['ratio'])}_{spec.get('schedule', 'oneshot')}"
        )
    with pytest.raises(ValueError, match=rf"plan .*plan\.json.*{message}"):
        load_plan(_plan(tmp_path, **changes))


def test_plan_missing_keys(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"name": "x"}))
    with pytest.raises(ValueError, match=r"plan .*plan\.json: missing key\(s\) \['preset'"):
        load_plan(path)


def test_narrow_control_matches_the_pruned_parameter_count() -> None:
    target = 2_200_000
    features = narrow_features(target)
    assert abs(count_parameters(RAAGR2Net(features=features, out_channels=3)) - target) / target < 0.1
    assert all(b % a == 0 for a, b in zip(features, features[1:]))


def test_workdir_of_another_plan_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    Study(load_plan(TINY_PLAN), data, tmp_path / "work").check_workdir()
    other = load_plan(_plan(tmp_path, teacher_epochs=2))
    with pytest.raises(ValueError, match=r"study\.json: this workdir holds units of another plan"):
        Study(other, data, tmp_path / "work").check_workdir()


def _study(data: Path, workdir: Path, results: Path) -> list[str]:
    return [
        sys.executable, "-m", "benchmarks.study", "--data", str(data), "--plan", str(TINY_PLAN),
        "--workdir", str(workdir), "--results", str(results),
    ]  # fmt: skip


@pytest.mark.e2e
def test_study_end_to_end_on_phantoms_resumes_after_sigkill(tmp_path: Path) -> None:
    from data_prep.synthetic import write_phantom_dataset

    data, workdir, results = tmp_path / "data", tmp_path / "work", tmp_path / "results"
    write_phantom_dataset(data, 5, seed=1, shape=(32, 32, 16))
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    first = subprocess.Popen(_study(data, workdir, results), cwd=REPO, env=env, start_new_session=True)
    teacher = workdir / "units" / "s0" / "f0" / "teacher_baseline" / "result.json"
    shared_run = workdir / "units" / "s0" / "f0" / "teacher_shared"
    deadline = time.time() + 600
    while not (teacher.is_file() and shared_run.is_dir()) and time.time() < deadline and first.poll() is None:
        time.sleep(0.5)
    time.sleep(3)  # inside the second bundle run
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert teacher.is_file(), "the first unit finished before the kill"
    assert not (shared_run / "result.json").is_file(), "killed inside the second unit"
    stamp = teacher.stat().st_mtime_ns

    subprocess.run(_study(data, workdir, results), cwd=REPO, env=env, check=True)
    assert teacher.stat().st_mtime_ns == stamp, "a finished unit is not run again"
    out = json.loads((results / "results.json").read_text())
    models = out["models"]
    expected = {
        "teacher_baseline", "teacher_shared", "control_teacher_long", "control_narrow", "control_narrow_kd",
        "baseline_magnitude_l1_50_oneshot", "baseline_taylor_50_oneshot", "shared_depthwise_magnitude_l1_50_oneshot",
        "teacher_baseline_onnx_int8", "teacher_baseline_onnx_fp16",
    }  # fmt: skip
    assert expected <= set(models)
    for model_id, model in models.items():
        assert len(model["per_case"]) == 5, model_id  # every phantom patient scored once, by a model not trained on it
        assert model["summary"]["wt_dice"]["n"] == 5
    for fold in out["folds"]:
        assert not set(fold["test"]) & set(fold["training"])
    assert models["baseline_taylor_50_oneshot"]["parameters"] < models["teacher_baseline"]["parameters"]
    assert models["baseline_taylor_50_oneshot"]["vs_reference"]["wt_dice"]["ci"]["n"] == 5
    assert set(out["postprocessing"]) == {"largest_component", "small_et_to_ncr"}
    assert out["cka"]["baseline_taylor_50_oneshot"]["matrix"]
    report = (results / "study_report.md").read_text()
    for png in ("pareto_dice_vs_macs.png", "per_case_dice.png", "cka_baseline_taylor_50_oneshot.png"):
        assert png in report and (results / png).stat().st_size > 1000
    assert "UPENN-GBM" in report and "CC BY 4.0" in report


ALLOCATION_PLAN = REPO / "tests" / "configs" / "study_allocation_tiny.json"


def test_allocation_plan_names_each_arm_and_refuses_unknown_allocations(tmp_path: Path) -> None:
    plan = load_plan(ALLOCATION_PLAN)
    assert [c.model_id for c in plan.compressed] == [
        "baseline_taylor_50_oneshot_uniform",
        "baseline_taylor_50_oneshot_global",
        "baseline_taylor_50_oneshot_rl",
        "baseline_taylor_50_oneshot_rl_at_global",
        "baseline_taylor_50_oneshot_rl_latency",
    ]
    assert plan.compressed[4].label == "baseline taylor 50% oneshot, rl (latency) allocation"
    assert (
        plan.compressed[3].label == "baseline taylor 50% oneshot, rl (macs at the global allocation's cost) allocation"
    )
    raw = json.loads(ALLOCATION_PLAN.read_text())
    raw["compressed"][0]["allocation"] = "learned"
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=r"plan .*plan\.json: 'compressed\[0\]' allocation: must be one of"):
        load_plan(path)
    raw["compressed"][0].update(allocation="rl", rl_cost="watts")
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=r"'compressed\[0\]' rl_cost: must be one of"):
        load_plan(path)


@pytest.mark.e2e
def test_allocation_study_on_phantoms(tmp_path: Path) -> None:
    from data_prep.synthetic import write_phantom_dataset

    data, workdir, results = tmp_path / "data", tmp_path / "work", tmp_path / "results"
    write_phantom_dataset(data, 5, seed=1, shape=(32, 32, 16))
    command = [
        sys.executable, "-m", "benchmarks.study.allocation", "--data", str(data), "--plan", str(ALLOCATION_PLAN),
        "--workdir", str(workdir), "--results", str(results),
    ]  # fmt: skip
    subprocess.run(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "2"}, check=True)
    out = json.loads((results / "results.json").read_text())
    models = out["models"]
    uniform, rl = models["baseline_taylor_50_oneshot_uniform"], models["baseline_taylor_50_oneshot_rl"]
    for model_id, model in models.items():
        assert len(model["per_case"]) == 10, model_id  # 5 patients x 2 seeds, each by a model not trained on it
        assert len(model["per_patient"]) == 5 and all(r["seeds"] == 2 for r in model["per_patient"])
        assert model["summary"]["wt_dice"]["n"] == 5 and len(model["over_seeds"]["metrics"]["wt_dice"]["per_seed"]) == 2
    at_global, global_ = models["baseline_taylor_50_oneshot_rl_at_global"], models["baseline_taylor_50_oneshot_global"]
    for learned, hand_made, target in ((rl, uniform, "uniform"), (at_global, global_, "global")):
        for mine, theirs in zip(learned["per_fold"], hand_made["per_fold"]):  # equal MACs by construction, per fold
            assert (mine["seed"], mine["fold"]) == (theirs["seed"], theirs["fold"])
            assert mine["macs_per_slice"] == pytest.approx(theirs["macs_per_slice"], rel=0.03)
            assert len(mine["search"]["rewards"]) == 2 and mine["search"]["target"]["allocation"] == target
    latency = models["baseline_taylor_50_oneshot_rl_latency"]["per_fold"]
    assert all(f["search"]["latency_check"]["searched_ms_measured"] > 0 for f in latency)
    pairs = {(c["model"], c["reference"]) for c in out["comparisons"]}
    assert ("baseline_taylor_50_oneshot_rl", "baseline_taylor_50_oneshot_uniform") in pairs
    assert ("baseline_taylor_50_oneshot_rl_at_global", "baseline_taylor_50_oneshot_global") in pairs
    assert ("baseline_taylor_50_oneshot_global", "baseline_taylor_50_oneshot_uniform") in pairs
    assert all(c["metrics"]["wt_dice"]["n"] == 5 for c in out["comparisons"])  # paired per patient, not per seed
    report = (results / "report.md").read_text()
    for png in ("per_case_dice.png", "search_rewards.png", "chosen_ratios.png"):
        assert png in report and (results / png).stat().st_size > 1000
    assert "UPENN-GBM" in report  # the attribution of the real data the study is run on
