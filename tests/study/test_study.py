"""The phantom study: arms differ only in their loss, the table is mean ± std over seeds, a tiny study runs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from syncas_jax.study.__main__ import main, run_config
from syncas_jax.study.arms import ARMS, DEFAULT_ARMS, METRICS, SIZES, format_table, summarize_runs, table_csv


@pytest.mark.parametrize("size", sorted(SIZES))
def test_arms_share_budget_and_data_and_differ_only_in_the_loss(tmp_path, size):
    configs = {arm: run_config(tmp_path, SIZES[size], arm, seed=1) for arm in DEFAULT_ARMS}
    loss_keys = {"contrastive_weight", "branch_aware"}
    for arm, raw in configs.items():
        others = {k: v for k, v in raw.items() if k not in loss_keys | {"output_dir"}}
        first = {k: v for k, v in configs["dice_ce"].items() if k not in loss_keys | {"output_dir"}}
        assert others == first, arm
        assert raw["seed"] == 1 and raw["data_dir"] == str(tmp_path / "data" / "cache")
    assert configs["dice_ce"]["contrastive_weight"] == 0.0
    assert configs["plain"]["branch_aware"] is False and configs["branch_aware"]["branch_aware"] is True
    assert (
        configs["plain"].get("contrastive_weight", 0.1) > 0
        and configs["branch_aware"].get("contrastive_weight", 0.1) > 0
    )


@pytest.mark.parametrize("size", sorted(SIZES))
def test_online_arm_is_branch_aware_rendered_in_the_step_from_the_cta_cache(tmp_path, size):
    online, offline = (run_config(tmp_path, SIZES[size], arm, seed=2) for arm in ("online", "branch_aware"))
    assert online.pop("synthesis") == "online" and offline.pop("synthesis", "offline") == "offline"
    assert online.pop("data_dir") == str(tmp_path / "data" / "cta_cache")
    assert offline.pop("data_dir") == str(tmp_path / "data" / "cache")
    assert {k: v for k, v in online.items() if k != "output_dir"} == {
        k: v for k, v in offline.items() if k != "output_dir"
    }
    assert set(ARMS) == set(DEFAULT_ARMS) | {"online"}


def fake_run(arm, seed, dice):
    cases = {f"c{i}": {m: dice + 0.01 * i for m in METRICS} for i in range(2)}
    return {"arm": arm, "seed": seed, "cases": cases, "mean": {m: dice + 0.005 for m in METRICS}}


def test_summary_is_mean_and_std_over_seeds():
    runs = [fake_run("a", 0, 0.5), fake_run("a", 1, 0.7), fake_run("b", 0, 0.2)]
    table = summarize_runs(runs)
    assert table["a"]["dice"]["mean"] == pytest.approx(np.mean([0.505, 0.705]))
    assert table["a"]["dice"]["std"] == pytest.approx(np.std([0.505, 0.705]))
    assert table["b"]["dice"]["n"] == 1 and table["b"]["dice"]["std"] == 0.0
    markdown = format_table(table)
    assert markdown.splitlines()[2].startswith("| a | 0.605 ± 0.100")
    assert len(table_csv(runs).splitlines()) == 1 + 3 * 3  # header, 2 cases + mean per run


@pytest.mark.slow
def test_tiny_study_end_to_end(tmp_path, capsys):
    out = tmp_path / "study"
    args = ["--size", "tiny", "-o", str(out), "--seeds", "0", "--arms", "dice_ce", "online"]
    assert main(args) == 0
    report = json.loads((out / "study.json").read_text())
    assert set(report["arms"]) == {"dice_ce", "online"} and len(report["runs"]) == 2
    assert sorted(p.name for p in (out / "data" / "cta_cache").glob("*.json"))[-1] == "phantom_002.json"
    for run in report["runs"]:
        assert set(run["cases"]) == {"phantom_003", "phantom_003@3mm_quarter_dose"}  # one patient, two protocols
        assert 0.0 <= run["mean"]["dice"] <= 1.0
    assert set(report["by_protocol"]) == {"demo", "3mm_quarter_dose"}
    assert set(report["paired"]["online"]) == {"demo", "3mm_quarter_dose", "pooled"}
    assert "| dice_ce |" in (out / "study.md").read_text() and "| online | pooled" in (out / "study.md").read_text()
    assert (out / "study.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "study.csv").read_text().startswith("arm,seed,case,dice")
    results = sorted(out.glob("runs/*/result.json"))
    stamps = [p.stat().st_mtime_ns for p in results]
    assert main(args) == 0  # a rerun reuses every finished run
    assert [p.stat().st_mtime_ns for p in results] == stamps
    assert "| online |" in capsys.readouterr().out
