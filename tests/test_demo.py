"""`fastgrad demo --quick` runs end to end: every part prints what it shows and writes its files."""

import json

import numpy as np

from fastgrad.cli import main


def test_demo_quick_runs_every_part_and_writes_its_outputs(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path), "--seed", "0"]) == 0
    text = capsys.readouterr().out
    for heading in ["1. The lecture's example", "2. An MLP", "3. An Elman RNN", "4. Outputs"]:
        assert heading in text
    assert "grad [x, y, z] = [4, 4, -1]" in text
    for column in ["radius", "growth_rate", "log_radius", "lyapunov"]:
        assert column in text

    results = json.loads((tmp_path / "demo.json").read_text())
    assert results["lecture"]["grad"] == [4.0, 4.0, -1.0]
    mlp = results["mlp"]
    assert mlp["test_accuracy"] > 0.85  # 4 quick epochs of Adam on the digits
    assert mlp["step_us_fastgrad"] > 0 and mlp["step_us_numpy"] > 0
    rows = results["rnn"]["rows"]
    assert [r["radius"] for r in rows] == [0.9, 1.0, 1.1]
    # the measured growth rate rises with the radius, as the lecture's eigenvalue argument says
    rates = [r["growth_rate"] for r in rows]
    assert rates == sorted(rates) and rates[0] < 0
    for name in ["rnn_gradient_norms.csv", "rnn_gradient_norms.json", "rnn_gradient_norms.png",
                 "rnn_gradient_norms_norms.npz"]:
        assert (tmp_path / name).stat().st_size > 0, name
        assert name in text  # listed under "where the outputs went"
    norms = np.load(tmp_path / "rnn_gradient_norms_norms.npz")
    assert all(v.shape == (1000,) for v in norms.values())
