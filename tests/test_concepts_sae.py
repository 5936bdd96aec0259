"""The Matryoshka batch-top-k SAE: sparsity, the inference threshold, revival, seeding, resume, files, bad input."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from cxrfm.errors import ConfigError
from cxrfm.inference import sae as S

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def planted(n: int, d: int = 32, m: int = 48, rate: float = 0.06, seed: int = 0) -> np.ndarray:
    """Embeddings made of a few of ``m`` fixed directions each (what an SAE should recover)."""
    rng = np.random.default_rng(123)
    dic = rng.normal(size=(m, d))
    dic /= np.linalg.norm(dic, axis=1, keepdims=True)
    r = np.random.default_rng(seed)
    codes = (r.random((n, m)) < rate) * r.exponential(1.0, (n, m))
    return (codes @ dic + 0.01 * r.normal(size=(n, d))).astype(np.float32)


SMALL = S.SAEConfig(sizes=(16, 64), k=12, epochs=30, batch_size=64, lr=1e-3, seed=0)


@pytest.fixture(scope="module")
def trained():
    x = planted(1500)
    sae, history = S.train_sae(x, SMALL)
    return sae, history, x


def test_reconstructs_held_out_planted_embeddings_with_few_dead_features(trained):
    sae, history, _ = trained
    m = S.evaluate_sae(sae, planted(500, seed=1))  # other draws of the same dictionary
    assert m["r2"] > 0.85, m
    assert m["dead_fraction"] < 0.1, m
    assert set(m["r2_nested"]) == {"16", "64"} and m["r2_nested"]["16"] < m["r2_nested"]["64"] + 1e-6
    assert len(history["epochs"]) == SMALL.epochs


def test_batch_topk_keeps_k_per_input_on_average_and_threshold_is_batch_independent(trained):
    sae, _, x = trained
    xb = torch.from_numpy(x[:64])
    with torch.no_grad():
        codes = sae.encode(xb, batch_topk=True)
        assert int((codes > 0).sum()) <= SMALL.k * 64
        alone = torch.cat([sae.encode(xb[i:i + 1]) for i in range(8)])
        together = sae.encode(xb[:8])
    # inference codes of an image do not depend on its batch (up to float summation order)
    assert torch.allclose(alone, together, atol=1e-5)
    assert float(sae.threshold) > 0


def test_dead_feature_is_revived_towards_the_data():
    x = torch.from_numpy(planted(300))
    sae = S.MatryoshkaSAE(x.shape[1], SMALL, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    with torch.no_grad():
        sae.W_enc[:, 5] = 0.0
        sae.b_enc[5] = -10.0  # feature 5 can never fire
    assert not bool((sae.pre_activations(x)[:, 5] > 0).any())
    fired = torch.ones(SMALL.n_features, dtype=torch.bool)
    fired[5] = False
    assert S.revive_dead(sae, opt, fired, x, torch.Generator().manual_seed(0)) == 1
    assert bool((sae.pre_activations(x)[:, 5] > 0).any())


def test_seeded_training_is_reproducible_and_seed_sensitive():
    x = planted(256)
    cfg = S.SAEConfig(sizes=(8, 16), k=4, epochs=3, batch_size=64, seed=3)
    a, _ = S.train_sae(x, cfg)
    b, _ = S.train_sae(x, cfg)
    c, _ = S.train_sae(x, S.SAEConfig(sizes=(8, 16), k=4, epochs=3, batch_size=64, seed=4))
    assert torch.equal(a.W_dec, b.W_dec) and not torch.equal(a.W_dec, c.W_dec)


def test_resume_gives_the_uninterrupted_result(tmp_path):
    x = planted(256)
    full, _ = S.train_sae(x, S.SAEConfig(sizes=(8, 16), k=4, epochs=4, batch_size=64, seed=1))
    S.train_sae(x, S.SAEConfig(sizes=(8, 16), k=4, epochs=2, batch_size=64, seed=1), state_dir=tmp_path)
    resumed, hist = S.train_sae(x, S.SAEConfig(sizes=(8, 16), k=4, epochs=4, batch_size=64, seed=1),
                                state_dir=tmp_path)
    assert hist["resumed_from"] == 2 and len(hist["epochs"]) == 4
    assert torch.allclose(full.W_dec, resumed.W_dec) and torch.allclose(full.threshold, resumed.threshold)
    with pytest.raises(S.ConceptsError, match="other settings"):
        S.train_sae(x, S.SAEConfig(sizes=(8, 32), k=4, epochs=4, batch_size=64, seed=1), state_dir=tmp_path)
    with pytest.raises(S.ConceptsError, match="other embeddings"):
        S.train_sae(x[::-1].copy(), S.SAEConfig(sizes=(8, 16), k=4, epochs=4, batch_size=64, seed=1),
                    state_dir=tmp_path)


def test_save_load_round_trip_and_refusals(tmp_path, trained):
    sae, _, x = trained
    S.save_sae(sae, tmp_path, {"run": {"path": "r", "weights_sha256": "a" * 64}})
    back, info = S.load_sae(tmp_path, "a" * 64)
    assert info["d_in"] == x.shape[1]
    np.testing.assert_array_equal(S.reconstruct(back, x[:20])[0], S.reconstruct(sae, x[:20])[0])
    with pytest.raises(S.ConceptsError, match="another run"):
        S.load_sae(tmp_path, "b" * 64)
    with pytest.raises(S.ConceptsError, match="do not match"):
        back.encode(torch.zeros(2, x.shape[1] + 1))
    (tmp_path / S.SAE_JSON).write_text("{not json")
    with pytest.raises(S.ConceptsError, match="unreadable"):
        S.load_sae(tmp_path)
    with pytest.raises(S.ConceptsError, match="not a concepts folder"):
        S.load_sae(tmp_path / "nowhere")
    (tmp_path / S.SAE_JSON).write_text(json.dumps({"format": "other"}))
    with pytest.raises(S.ConceptsError, match="format"):
        S.load_sae(tmp_path)


def test_bad_settings_and_inputs_are_named():
    with pytest.raises(ConfigError, match="dictionary smaller than k"):
        S.SAEConfig(sizes=(4, 8), k=16).check()
    with pytest.raises(ConfigError, match="increasing"):
        S.SAEConfig(sizes=(64, 16), k=4).check()
    with pytest.raises(S.ConceptsError, match="N >= "):
        S.train_sae(np.zeros((3, 8), np.float32), S.SAEConfig(sizes=(8,), k=2))
    bad = planted(200)
    bad[3, 1] = np.nan
    with pytest.raises(S.ConceptsError, match="NaN"):
        S.train_sae(bad, S.SAEConfig(sizes=(8,), k=2, batch_size=64))


def low_rank(n: int, d: int = 64, rank: int = 4, seed: int = 0) -> np.ndarray:
    """Clustered embeddings on a few directions of a wide space, like the tiny model's (docs/concepts.md)."""
    basis = np.linalg.qr(np.random.default_rng(7).normal(size=(d, rank)))[0].T  # (rank, D)
    r = np.random.default_rng(seed)
    centres = np.random.default_rng(8).normal(size=(3, rank)) * 2
    z = centres[r.integers(0, 3, n)] + r.normal(size=(n, rank))
    return (z @ basis + 0.01 * r.normal(size=(n, d))).astype(np.float32)


def test_firing_rate_floor_raises_a_silent_feature_until_it_is_selected():
    x = torch.from_numpy(low_rank(256))
    sae = S.MatryoshkaSAE(x.shape[1], S.SAEConfig(sizes=(8, 32), k=4), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae.mean.copy_(x.mean(dim=0))
        sae.scale.copy_((x - sae.mean).norm(dim=1).mean())
        z0 = (x[0] - sae.mean) / sae.scale
        sae.W_enc[:, 5] = z0 / z0.norm()  # aligned with input 0 ...
        sae.b_enc[5] = -1.5  # ... but never selected
    xb = x[:64]
    assert not bool((sae.encode(x, batch_topk=True)[:, 5] > 0).any())
    before = sae.b_enc.detach().clone()
    assert S.raise_rare_biases(sae, sae.encode(xb, batch_topk=True), 0.0) == 0  # floor off: nothing moves
    assert torch.equal(sae.b_enc, before)
    codes = sae.encode(xb, batch_topk=True)
    low = (codes > 0).float().mean(dim=0) < 0.02
    assert bool(low[5]) and not bool(low.all())
    S.raise_rare_biases(sae, codes, 0.02)  # only the features under the floor move, by one step
    assert torch.allclose(sae.b_enc - before, low.float() * S.BALANCE_STEP, atol=1e-6)
    for _ in range(5000):
        codes = sae.encode(xb, batch_topk=True)
        if bool((codes[:, 5] > 0).any()):
            break
        S.raise_rare_biases(sae, codes, 0.02)
    assert bool((codes[:, 5] > 0).any()), "the floor never brought feature 5 into the batch top-k"


def test_floor_and_settling_decay_leave_no_feature_dead_on_held_out_low_rank_rows():
    x, held = low_rank(1000), low_rank(400, seed=1)
    cfg = S.SAEConfig(sizes=(8, 32), k=8, epochs=30, batch_size=64, lr=1e-3, seed=0)
    assert cfg.min_rate == 0.02 and cfg.settle_decay  # the defaults this test is about
    sae, _ = S.train_sae(x, cfg)
    m = S.evaluate_sae(sae, held)
    assert m["dead_fraction"] == 0.0 and m["rare_fraction"] < 0.05 and m["r2"] > 0.95, m
    assert S.epoch_lr(cfg, 0) == cfg.lr and S.epoch_lr(cfg, cfg.epochs - 1) < 0.2 * cfg.lr
    assert S.epoch_lr(dataclasses.replace(cfg, settle_decay=False), cfg.epochs - 1) == cfg.lr


def test_feature_r2_loss_is_the_drop_from_removing_each_feature(trained):
    sae, _, x = trained
    held = planted(300, seed=2)
    codes, recon = S.reconstruct(sae, held)
    loss = S.feature_r2_loss(sae, held, codes, recon)
    r2 = S.explained_variance(held, recon)
    for f in (0, 7, int(np.argmax((codes > 0).sum(axis=0)))):
        ablated = codes.copy()
        ablated[:, f] = 0
        with torch.no_grad():
            direct = r2 - S.explained_variance(held, sae.decode(torch.from_numpy(ablated)).numpy())
        assert loss[f] == pytest.approx(direct, abs=1e-6)
    m = S.evaluate_sae(sae, held)
    dead = (codes.max(axis=0) <= 0).mean()
    assert m["negligible_fraction"] >= dead and m["rare_fraction"] >= dead
    assert m["negligible_fraction"] == pytest.approx(float((loss < S.NEGLIGIBLE_R2).mean()))


def test_folders_from_before_the_floor_load_as_trained_without_it(tmp_path, trained):
    sae, _, _ = trained
    S.save_sae(sae, tmp_path, {})
    info = json.loads((tmp_path / S.SAE_JSON).read_text())
    for key in ("min_rate", "dead_rows", "k_aux"):
        del info["config"][key]
    (tmp_path / S.SAE_JSON).write_text(json.dumps(info))
    back, _ = S.load_sae(tmp_path)
    assert back.config.min_rate == 0.0 and back.config.dead_rows == 0
    with pytest.raises(ConfigError, match="min_rate"):
        S.SAEConfig(min_rate=1.5).check()
