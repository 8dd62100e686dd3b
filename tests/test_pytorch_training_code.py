"""PyTorch-style training code, written as a PyTorch user writes it, gives PyTorch's losses.

Each model is built twice, in fastgrad and in torch, from the same initial weights, and trained
for a few steps with the same data; the losses of every step must agree. Without torch
(the ``torch`` extra) the fastgrad side still runs and must learn.
"""

import pathlib

import numpy as np
import pytest

import fastgrad as fg

try:
    import torch
except ImportError:
    torch = None

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _copy_weights(ours, theirs):
    """Our module's values into torch's (same names and layouts, as PyTorch's)."""
    state = {k: torch.tensor(v) for k, v in ours.state_dict().items()}
    theirs.load_state_dict(state)


def _train(model, opt, batches, loss_fn):
    losses = []
    for xb, yb in batches:
        opt.zero_grad()
        loss = loss_fn(model(xb), yb)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_an_mlp_with_layer_norm_and_dropout():
    from fastgrad.datasets import load_digits

    X, y, _, _ = load_digits()
    X = X.astype(np.float64)  # the models below are float64, as torch.double()
    batches = [(X[i : i + 32], y[i : i + 32]) for i in range(0, 160, 32)]

    def build(nn, **kw):
        return nn.Sequential(nn.Linear(64, 32, **kw), nn.LayerNorm(32), nn.GELU(),
                             nn.Dropout(0.1), nn.Linear(32, 10, **kw))

    model = build(fg.nn, seed=0)
    opt = fg.optim.Adam(model.parameters(), lr=1e-2)
    model.eval()  # dropout off: torch's masks come from another generator
    losses = _train(model, opt, [(fg.tensor(a), b) for a, b in batches],
                    fg.nn.functional.cross_entropy)
    assert losses[-1] < losses[0]
    if torch is None:
        return
    ref = build(torch.nn).double()
    fresh = build(fg.nn, seed=0)
    _copy_weights(fresh, ref)
    ref.eval()
    t_opt = torch.optim.Adam(ref.parameters(), lr=1e-2)
    t_losses = _train(ref, t_opt, [(torch.tensor(a), torch.tensor(b)) for a, b in batches],
                      torch.nn.functional.cross_entropy)
    np.testing.assert_allclose(losses, t_losses, rtol=1e-9)


def test_a_char_level_lstm_with_embedding_on_the_projects_docs():
    text = (ROOT / "docs" / "coming-from-pytorch-jax.md").read_text()[:2000]
    chars = sorted(set(text))
    ids = np.array([chars.index(c) for c in text])
    V, T, B = len(chars), 16, 4
    starts = np.arange(B) * (len(ids) // B)

    def batch(k):
        s = starts + k * T
        x = np.stack([ids[i : i + T] for i in s], axis=1)  # (T, B)
        return x, np.stack([ids[i + 1 : i + T + 1] for i in s], axis=1)

    class CharModel:
        def __init__(self, nn, **kw):
            self.emb, self.lstm = nn.Embedding(V, 8, **kw), nn.LSTM(8, 16, **kw)
            self.head = nn.Linear(16, V, **kw)

        def __call__(self, x):
            hs, _ = self.lstm(self.emb(x))
            return self.head(hs).reshape(-1, V)

        def parameters(self):
            return [*self.emb.parameters(), *self.lstm.parameters(), *self.head.parameters()]

    def loss_fn(logits, y):
        return (torch.nn.functional if torch is not None and isinstance(logits, torch.Tensor)
                else fg.nn.functional).cross_entropy(logits, y.reshape(-1))

    model = CharModel(fg.nn, seed=0)
    opt = fg.optim.SGD(model.parameters(), lr=0.5)
    data = [batch(k) for k in range(4)]
    losses = _train(model, opt, data, loss_fn)
    assert losses[-1] < losses[0]
    if torch is None:
        return
    fresh, ref = CharModel(fg.nn, seed=0), CharModel(torch.nn)
    for a, b in ((fresh.emb, ref.emb), (fresh.lstm, ref.lstm), (fresh.head, ref.head)):
        b.double()
        _copy_weights(a, b)
    t_opt = torch.optim.SGD(ref.parameters(), lr=0.5)
    t_losses = _train(ref, t_opt, [(torch.tensor(x), torch.tensor(y)) for x, y in data],
                      loss_fn)
    np.testing.assert_allclose(losses, t_losses, rtol=1e-9)


def test_an_embedding_model_compiles_and_follows_each_calls_indices():
    emb, head = fg.nn.Embedding(12, 4, padding_idx=0, seed=0), fg.nn.Linear(4, 3, seed=1)
    opt = fg.optim.SGD([*emb.parameters(), *head.parameters()], lr=0.1)
    step = fg.compile(lambda x, y: fg.cross_entropy(head(emb(x).mean(1)), y), optimizer=opt)
    eager_emb, eager_head = fg.nn.Embedding(12, 4, padding_idx=0, seed=0), fg.nn.Linear(4, 3,
                                                                                           seed=1)
    eager_opt = fg.optim.SGD([*eager_emb.parameters(), *eager_head.parameters()], lr=0.1)
    rng = np.random.default_rng(0)
    for _ in range(3):
        x, y = rng.integers(0, 12, (5, 6)), rng.integers(0, 3, 5)
        loss = step(x, y)
        eager_opt.zero_grad()
        eager = fg.cross_entropy(eager_head(eager_emb(x).mean(1)), y)
        eager.backward()
        eager_opt.step()
        assert loss == pytest.approx(eager.item(), rel=1e-12)
    np.testing.assert_allclose(emb.weight.numpy(), eager_emb.weight.numpy(), rtol=1e-12)
    assert not emb.weight.numpy()[0].any()  # the padding row gets no gradient


def test_dropout_is_seeded_off_in_eval_and_refused_inside_compile():
    d = fg.nn.Dropout(0.25, seed=3)
    y = d(fg.ones(20_000)).numpy()
    assert abs((y == 0).mean() - 0.25) < 0.02 and set(np.unique(y)) == {0.0, 1 / 0.75}
    assert np.array_equal(fg.nn.Dropout(0.25, seed=3)(fg.ones(50)).numpy(), y[:50])
    np.testing.assert_array_equal(d.eval()(fg.ones(3)).numpy(), 1.0)
    lin = fg.nn.Linear(3, 1, seed=0)
    step = fg.compile(lambda x: fg.nn.Dropout(0.5, seed=0)(lin(x)).sum())
    with pytest.raises(fg.FastgradError, match="dropout: inside fg.compile"):
        step(np.ones((2, 3)))


def test_a_cnn_on_the_shipped_digits():
    from fastgrad.datasets import load_digits

    X, y, _, _ = load_digits()
    images = X.astype(np.float64).reshape(-1, 1, 8, 8)
    batches = [(images[i : i + 32], y[i : i + 32]) for i in range(0, 96, 32)]

    def build(nn, **kw):
        return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, **kw), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(8, 8, 3, padding=1, **kw), nn.ReLU(), nn.AvgPool2d(2),
                             nn.Flatten(), nn.Linear(8 * 2 * 2, 10, **kw))

    model = build(fg.nn, seed=0)
    opt = fg.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = _train(model, opt, batches, fg.nn.functional.cross_entropy)
    assert losses[-1] < losses[0]
    # the same steps compiled give the same losses
    compiled_model = build(fg.nn, seed=0)
    c_opt = fg.optim.SGD(compiled_model.parameters(), lr=0.05, momentum=0.9)
    step = fg.compile(lambda a, b: fg.cross_entropy(compiled_model(a), b), optimizer=c_opt)
    np.testing.assert_allclose([step(a, b) for a, b in batches], losses, rtol=1e-10)
    if torch is None:
        return
    ref = build(torch.nn).double()
    _copy_weights(build(fg.nn, seed=0), ref)
    t_opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    t_losses = _train(ref, t_opt, [(torch.tensor(a), torch.tensor(b)) for a, b in batches],
                      torch.nn.functional.cross_entropy)
    np.testing.assert_allclose(losses, t_losses, rtol=1e-9)
