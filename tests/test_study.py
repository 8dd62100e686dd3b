"""fastgrad.study: each study against a case whose answer is known in closed form, the sweep
machinery on a local process pool, a Dask cluster and a plain executor, and the command line.
Sizes are tiny on purpose: the answers are exact (or hold to a stated tolerance) at any size."""

import concurrent.futures as cf
import itertools
import json
import pathlib

import numpy as np
import pytest

import fastgrad as fg
from fastgrad import cli, study

# ----------------------------------------------------------------------------- RNN gradient norms
RADII = [0.8, 1.0, 1.15]


@pytest.fixture(scope="module")
def linear_rnn():
    return study.rnn_gradient_norms(hidden=6, T=600, spectral_radius=RADII, seeds=2,
                                    nonlinearity="linear", weights="symmetric",
                                    lyapunov_steps=300)


def test_linear_rnn_gradient_growth_rate_is_log_spectral_radius(linear_rnn):
    """Identity activation, symmetric W_hh: dL/dh_t = c W^(T-1-t), whose norm grows by exactly
    the spectral radius per step back once the top eigenvector dominates. Tolerance 0.01 per
    step (the fit's start-up transient is O(1/T))."""
    assert len(linear_rnn.rows) == len(RADII) * 2
    for row in linear_rnn.rows:
        assert row["log_radius"] == pytest.approx(np.log(row["radius"]), abs=1e-12)
        assert row["growth_rate"] == pytest.approx(np.log(row["radius"]), abs=0.01), row
        assert row["lyapunov"] == pytest.approx(np.log(row["radius"]), abs=0.01), row
        assert row["norm_W"] == pytest.approx(row["radius"], rel=1e-9)  # symmetric: ||W|| = rho


def test_norms_are_the_exact_gradients_from_the_one_backward_sweep(linear_rnn):
    """For the linear RNN, dL/dh_t = c W^(T-1-t) (L = c . h_{T-1}, h_t = h_{t-1} W^T + ...)."""
    for (radius, seed), norms in linear_rnn.norms.items():
        W = study.recurrent_matrix(6, radius, "symmetric", seed=seed)
        g, expected = linear_rnn.loss_vectors[(radius, seed)], np.empty(norms.size)
        for t in range(norms.size - 1, -1, -1):
            expected[t] = np.linalg.norm(g)
            g = g @ W
        np.testing.assert_allclose(norms, expected, rtol=1e-9)


def test_vanished_and_exploded_report_the_first_crossing_seen_from_the_loss(linear_rnn):
    rows = {(r["radius"], r["seed"]): r for r in linear_rnn.rows}
    for (radius, seed), norms in linear_rnn.norms.items():
        row = rows[(radius, seed)]
        small, big = np.flatnonzero(norms < 1e-6), np.flatnonzero(norms > 1e6)
        assert row["vanished_at_t"] == (int(small[-1]) if small.size else None)
        assert row["exploded_at_t"] == (int(big[-1]) if big.size else None)
    assert rows[(0.8, 0)]["vanished_at_t"] is not None and rows[(0.8, 0)]["exploded_at_t"] is None
    assert rows[(1.15, 0)]["exploded_at_t"] is not None


def test_checkpointing_gives_the_same_per_step_norms():
    kw = {"hidden": 5, "T": 120, "spectral_radius": 1.05, "nonlinearity": "tanh",
          "input_std": 0.5, "lyapunov_steps": 0}
    plain = study.rnn_gradient_norms(**kw)
    ckpt = study.rnn_gradient_norms(checkpoint="sqrt", **kw)
    np.testing.assert_array_equal(plain.norms[(1.05, 0)], ckpt.norms[(1.05, 0)])
    assert plain.rows[0]["lyapunov"] is None


def test_tanh_rnn_gradient_growth_rate_matches_its_top_lyapunov_exponent():
    """Nonlinear: log(radius) no longer predicts the rate; the exponent of the Jacobian products
    along the trajectory does (to 0.02 per step at this length)."""
    r = study.rnn_gradient_norms(hidden=8, T=800, spectral_radius=[0.9, 1.3], nonlinearity="tanh",
                                 input_std=0.5, lyapunov_steps=800)
    for row in r.rows:
        assert row["growth_rate"] == pytest.approx(row["lyapunov"], abs=0.02), row
    assert r.rows[1]["growth_rate"] < np.log(1.3) - 0.1  # saturation: far below log(radius)


# ----------------------------------------------------------------------------- spectra, Lyapunov
def test_lyapunov_exponents_of_a_diagonal_linear_map_are_logs_of_its_abs_diagonal():
    d = np.array([0.5, 2.0, -1.5, 1.1])
    got = study.lyapunov_exponents(lambda h, x: h * d, np.ones(4), k=4, length=400,
                                   transient=100)
    np.testing.assert_allclose(got, np.sort(np.log(np.abs(d)))[::-1], atol=1e-8)


def test_lyapunov_exponents_of_a_non_normal_linear_map_are_logs_of_its_eigenvalue_moduli():
    rng = np.random.default_rng(0)
    P = rng.normal(size=(4, 4)) + 3 * np.eye(4)
    A = P @ np.diag([0.3, -0.9, 1.4, 2.5]) @ np.linalg.inv(P)
    got = study.lyapunov_exponents(lambda h, x: h @ A, np.ones(4), k=2, length=600,
                                   transient=200, qr_every=3)
    np.testing.assert_allclose(got, np.log([2.5, 1.4]), atol=1e-3)


def test_jacobian_product_norms_equal_numpy_products_along_a_tanh_trajectory():
    rng = np.random.default_rng(1)
    W = study.recurrent_matrix(5, 1.2, seed=3)
    xs = rng.normal(size=(12, 5)) * 0.5

    def step(h, x):
        return (h @ W.T + x).tanh()

    got = study.jacobian_product_norms(step, np.zeros(5), xs, window=4)
    h, expected, J = np.zeros(5), [], np.eye(5)
    for t in range(12):
        h = np.tanh(h @ W.T + xs[t])
        J = J @ W.T * (1 - h * h)  # row-vector convention: dh_t = dh_{t-1} W^T diag(1 - h_t^2)
        if (t + 1) % 4 == 0:
            expected.append(np.linalg.norm(J, 2))
            J = np.eye(5)
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_spectral_radius_helpers():
    w = fg.nn.Parameter(np.array([[0.0, 3.0], [1.0, 0.0]]))
    assert study.spectral_radius(w) == pytest.approx(np.sqrt(3))
    assert study.largest_singular_value(w) == pytest.approx(3.0)
    assert study.set_spectral_radius(w, 0.5) is w  # a parameter is rescaled in place
    assert study.spectral_radius(w) == pytest.approx(0.5)
    for kind in study.WEIGHTS:
        W = study.recurrent_matrix(7, 1.3, kind, seed=2)
        assert study.spectral_radius(W) == pytest.approx(1.3)
        assert study.largest_singular_value(W) >= 1.3 - 1e-9
    Q = study.recurrent_matrix(7, 1.3, "orthogonal", seed=2)
    np.testing.assert_allclose(np.abs(np.linalg.eigvals(Q)), 1.3)


# ----------------------------------------------------------------------------- saturation
def _chain(activation, depth, width, w_scale, bias):
    """An MLP whose hidden->hidden weights are w_scale * I with the given bias, on x = 0."""
    m = fg.nn.MLP([3] + [width] * depth + [2], activation=activation, seed=0)
    for i, layer in enumerate(m.layers):
        if 0 < i < depth:
            layer.weight.numpy()[...] = w_scale * np.eye(width)
            layer.bias.numpy()[...] = bias
        elif i == 0:
            layer.bias.numpy()[...] = 0.0
    return m


def test_sigmoid_chain_at_zero_passes_exactly_a_quarter_of_the_gradient_per_layer():
    """h = 0.5 everywhere (z = 0: bias -0.5 cancels W h): sigma'(0) = 0.25 in every layer, no
    unit saturated, and ||dL/dh_l|| = 0.25 ||dL/dh_{l+1}|| (W = I)."""
    m = _chain("sigmoid", depth=5, width=3, w_scale=1.0, bias=-0.5)
    rows = study.layer_gradient_stats(m, np.zeros((4, 3)), np.array([0, 1, 0, 1]))
    assert [r["layer"] for r in rows] == [1, 2, 3, 4, 5]
    for r in rows:
        assert r["mean_local_grad"] == 0.25 and r["fraction_saturated"] == 0.0
    for lower, upper in itertools.pairwise(rows):
        assert lower["grad_norm_h"] == pytest.approx(0.25 * upper["grad_norm_h"], rel=1e-12)


def test_tanh_chain_at_zero_multiplies_the_gradient_by_the_weight_scale():
    m = _chain("tanh", depth=4, width=3, w_scale=2.0, bias=0.0)
    rows = study.layer_gradient_stats(m, np.zeros((4, 3)), np.array([0, 1, 0, 1]))
    for lower, upper in itertools.pairwise(rows):
        assert lower["mean_local_grad"] == 1.0
        assert lower["grad_norm_h"] == pytest.approx(2.0 * upper["grad_norm_h"], rel=1e-12)


def test_saturated_sigmoid_layers_are_counted_and_pass_almost_nothing():
    m = _chain("sigmoid", depth=3, width=3, w_scale=1.0, bias=12.0)
    rows = study.layer_gradient_stats(m, np.zeros((4, 3)), np.array([0, 1, 0, 1]))
    assert rows[0]["fraction_saturated"] == 0.0  # layer 1: z = 0
    for r in rows[1:]:
        assert r["fraction_saturated"] == 1.0
        assert r["mean_local_grad"] < 1e-5


def test_saturation_study_on_digits_shows_the_quarter_bound_and_decay_with_depth():
    r = study.saturation(depth=4, width=8, n=32)
    sig = [row for row in r.rows if row["activation"] == "sigmoid"]
    assert len(sig) == 4 and all(row["mean_local_grad"] <= 0.25 for row in sig)
    norms = [row["grad_norm_h"] for row in sig]
    assert norms == sorted(norms)  # smaller towards the input


# ----------------------------------------------------------------------------- dead ReLUs
def test_dead_relu_fraction_on_a_hand_built_network():
    """Inputs are positive: a unit with non-positive weights and bias never fires."""
    m = fg.nn.MLP([2, 4, 2], activation="relu")
    m.layers[0].weight.numpy()[...] = [[1, 0], [-1, -2], [0.5, 0.5], [0, -1]]
    m.layers[0].bias.numpy()[...] = [0, 0, -100, 0]
    X = np.array([[1.0, 2.0], [0.5, 0.1], [3.0, 0.0]])
    assert study.dead_relu_fraction(m, X) == [0.75]
    m.layers[0].bias.numpy()[...] = [0, 0, 0, 5]
    assert study.dead_relu_fraction(m, X) == [0.25]


def test_dead_relus_study_rows_and_bad_init_kills_more_units_than_baseline():
    r = study.dead_relus(scenarios=["baseline", "bad_init"], hidden=(16, 16), epochs=1)
    assert [(row["scenario"], row["epoch"]) for row in r.rows] == [
        ("baseline", 0), ("baseline", 1), ("bad_init", 0), ("bad_init", 1)]
    base, bad = r.rows[0], r.rows[2]
    assert bad["dead_layer2"] > base["dead_layer2"]
    assert all(0.0 <= row[c] <= 1.0 for row in r.rows for c in ("dead_layer1", "dead_layer2"))


# ----------------------------------------------------------------------------- data scale, clipping
def test_gradient_of_a_linear_model_at_zero_scales_with_the_input_and_normalising_undoes_it():
    r = study.data_scale(scales=(1, 10, 1000), epochs=1)
    raw = [row for row in r.rows if not row["normalised"]]
    norm = [row for row in r.rows if row["normalised"]]
    for row in raw:
        assert row["grad_norm_init"] == pytest.approx(raw[0]["grad_norm_init"] * row["scale"],
                                                      rel=1e-9)
    for row in norm:
        assert row["grad_norm_init"] == pytest.approx(norm[0]["grad_norm_init"], rel=1e-6)
        assert row["final_loss"] == pytest.approx(norm[0]["final_loss"], rel=1e-6)


def test_adding_problem_targets_are_the_sums_of_the_marked_values():
    x, y = study.adding_problem(5, 12, seed=3)
    np.testing.assert_allclose(y[:, 0], (x[:, :, 0] * x[:, :, 1]).sum(axis=0))


def test_gradient_clipping_runs_share_init_and_data_and_count_clipped_steps():
    r = study.gradient_clipping(T=8, hidden=4, steps=6, batch=4, max_norm=0.5)
    (free, c_free), (clipped, c_clip) = zip(r.rows, r.curves.values())
    assert free["run"] == "no clipping" and clipped["max_norm"] == 0.5
    assert c_free["loss"][0] == c_clip["loss"][0]  # same initialisation and first batch
    assert c_free["grad_norm"][0] == c_clip["grad_norm"][0]
    assert clipped["clipped_steps"] == int(np.sum(c_clip["grad_norm"] > 0.5))


# ----------------------------------------------------------------------------- results: tables, files, plots
def test_table_csv_and_json_hold_the_rows(linear_rnn, tmp_path):
    text = str(linear_rnn.table())
    assert "growth_rate" in text and "log_radius" in text and "lyapunov" in text
    assert len(text.splitlines()) == 3 + len(linear_rnn.rows)
    linear_rnn.to_csv(tmp_path / "r.csv")
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert lines[0].split(",") == linear_rnn.columns and len(lines) == 1 + len(linear_rnn.rows)
    doc = json.loads(linear_rnn.to_json(tmp_path / "r.json").read_text())
    assert doc["study"] == "rnn_gradient_norms" and len(doc["rows"]) == len(linear_rnn.rows)


def test_plots_are_written_as_png(linear_rnn, tmp_path):
    pytest.importorskip("matplotlib")
    results = [linear_rnn, study.saturation(depth=2, width=4, n=8),
               study.gradient_clipping(T=4, hidden=3, steps=3, batch=2)]
    for i, res in enumerate(results):
        path = res.plot(tmp_path / f"p{i}.png")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_says_how_to_install_it(linear_rnn, tmp_path, monkeypatch):
    import sys

    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    with pytest.raises(fg.FastgradError, match=r"fastgrad\[plot\]"):
        linear_rnn.plot(tmp_path / "x.png")


# ----------------------------------------------------------------------------- sweeps
GRID = {"spectral_radius": [0.9, 1.1], "seed": [0, 1]}
FIXED = {"hidden": 3, "T": 40, "nonlinearity": "linear", "weights": "symmetric",
         "lyapunov_steps": 20}


def test_sweep_gives_the_same_table_on_processes_dask_and_in_process():
    distributed = pytest.importorskip("dask.distributed")
    serial = study.sweep(study.rnn_gradient_norms, GRID, executor="serial", **FIXED)
    assert [(r["radius"], r["seed"]) for r in serial.rows] == [(0.9, 0), (0.9, 1), (1.1, 0),
                                                               (1.1, 1)]
    local = study.sweep(study.rnn_gradient_norms, GRID, max_workers=2, **FIXED)
    with distributed.LocalCluster(processes=False, n_workers=1, threads_per_worker=2,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        dask = study.sweep(study.rnn_gradient_norms, GRID, executor=client, **FIXED)
    assert not serial.failed and not local.failed and not dask.failed
    assert local.rows == serial.rows and dask.rows == serial.rows
    assert str(local.table()).splitlines()[1:] == str(dask.table()).splitlines()[1:]
    merged = dask.combined()
    assert set(merged.norms) == {(r, s) for r in (0.9, 1.1) for s in (0, 1)}


def flaky_cell(x, marks):
    """Fails always for x == "bad"; for x == "once" fails on the first call only."""
    marks = pathlib.Path(marks)
    (marks / f"call-{x}-{len(list(marks.glob(f'call-{x}-*')))}").touch()
    if x == "bad":
        raise RuntimeError("this cell always fails")
    if x == "once" and len(list(marks.glob("call-once-*"))) == 1:
        raise RuntimeError("first attempt fails")
    return {"value": f"done {x}"}


def _calls(marks, x):
    return len(list(pathlib.Path(marks).glob(f"call-{x}-*")))


def test_a_failing_cell_is_retried_then_reported_not_dropped(tmp_path):
    with cf.ThreadPoolExecutor(2) as ex:
        r = study.sweep(flaky_cell, {"x": ["ok", "once", "bad"]}, executor=ex, retries=2,
                        marks=str(tmp_path))
    assert [row["value"] for row in r.rows] == ["done ok", "done once"]
    assert _calls(tmp_path, "once") == 2 and _calls(tmp_path, "bad") == 3
    assert list(r.failed) == [2]
    cell, error, attempts = r.failed[2]
    assert cell == {"x": "bad"} and attempts == 3 and "this cell always fails" in error
    assert "FAILED cells (1 of 3)" in str(r.table()) and "this cell always fails" in str(r.table())


def test_a_sweep_resumes_from_its_output_folder(tmp_path):
    marks, out = tmp_path / "marks", tmp_path / "out"
    marks.mkdir()
    first = study.sweep(flaky_cell, {"x": ["a", "b"]}, executor="serial", out=out,
                        marks=str(marks))
    assert (out / "sweep.csv").exists() and len(list(out.glob("cell-*.npz"))) == 2
    again = study.sweep(flaky_cell, {"x": ["a", "b", "c"]}, executor="serial", out=out,
                        marks=str(marks))
    assert [_calls(marks, x) for x in "abc"] == [1, 1, 1]  # only the new cell ran
    assert again.rows[:2] == first.rows and again.rows[2] == {"x": "c", "value": "done c"}


# ----------------------------------------------------------------------------- command line
def test_cli_study_rnn_writes_files_and_prints_the_table(tmp_path, capsys):
    out = tmp_path / "results"
    code = cli.main(["study", "rnn", "--T", "60", "--radius", "0.9:1.1:2", "--seeds", "2",
                     "--hidden", "4", "--lyapunov-steps", "30", "--workers", "1",
                     "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "radius  seed  growth_rate  log_radius  lyapunov" in printed
    assert printed.count("\n0.9 ") + printed.count("\n1.1 ") == 4
    for name in ("rnn_gradient_norms.csv", "rnn_gradient_norms.json",
                 "rnn_gradient_norms_norms.npz"):
        assert (out / name).exists(), name
    with np.load(out / "rnn_gradient_norms_norms.npz") as z:
        assert sorted(z.files) == ["radius=0.9_seed=0", "radius=0.9_seed=1", "radius=1.1_seed=0",
                                   "radius=1.1_seed=1"]
        assert z["radius=0.9_seed=0"].shape == (60,)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (out / "rnn_gradient_norms.png").exists()


def test_parse_range():
    assert study.parse_range("0.8:1.2:3") == [0.8, 1.0, 1.2]
    assert study.parse_range("0.9,1.1") == [0.9, 1.1]
