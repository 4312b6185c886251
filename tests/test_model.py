"""The decision model with every token mixer: causality, recurrence, padding, loss, learning."""

import math

import pytest
import torch
import torch.nn.functional as F

from decision_mamba.errors import UserError
from decision_mamba.mixers import MIXERS as TABLE
from decision_mamba.model import DecisionModel, ModelConfig

MIXERS = list(TABLE)  # every mixer of the table


def make_model(mixer, obs_dim=5, act_dim=3, discrete=False, state_shape=None, **kw):
    torch.manual_seed(0)
    cfg = ModelConfig(mixer=mixer, d_model=32, n_layer=2, dropout=0.0, max_ep_len=50, n_head=2,
                      s4_d_state=8, **kw)
    return DecisionModel(cfg, state_shape or (obs_dim,), act_dim, discrete=discrete).eval()


def make_batch(B=3, K=6, obs_dim=5, act_dim=3, discrete=False, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(B, K, obs_dim, generator=g, dtype=dtype)
    if discrete:
        actions = torch.randint(0, act_dim, (B, K), generator=g)
    else:
        actions = torch.rand(B, K, act_dim, generator=g, dtype=dtype) * 2 - 1
    rtg = torch.randn(B, K, 1, generator=g, dtype=dtype)
    timesteps = torch.arange(K).repeat(B, 1) + torch.randint(0, 20, (B, 1), generator=g)
    mask = torch.ones(B, K, dtype=torch.bool)
    return {"states": states, "actions": actions, "returns_to_go": rtg, "timesteps": timesteps, "mask": mask}


def predict(model, b):
    return model(b["states"], b["actions"], b["returns_to_go"], b["timesteps"], b["mask"])


@pytest.mark.parametrize("mixer", MIXERS)
def test_prediction_at_t_ignores_the_future_and_a_t(mixer):
    model = make_model(mixer)
    batch = make_batch()
    base = predict(model, batch)
    K = batch["states"].shape[1]
    for t in range(K):
        changed = {k: v.clone() for k, v in batch.items()}
        changed["states"][:, t + 1:] += 3.0
        changed["returns_to_go"][:, t + 1:] -= 2.0
        changed["actions"][:, t:] = -changed["actions"][:, t:]  # a_t comes after s_t
        out = predict(model, changed)
        torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1], rtol=1e-5, atol=1e-6)
        if t + 1 < K:  # the perturbation does reach later predictions
            assert (out[:, t + 1:] - base[:, t + 1:]).abs().max() > 1e-4


@pytest.mark.parametrize("mixer", MIXERS)
def test_full_sequence_forward_equals_stepping_token_by_token(mixer):
    model = make_model(mixer).double()
    batch = make_batch(dtype=torch.float64)
    full = predict(model, batch)
    state = model.init_state(batch["states"].shape[0])
    for t in range(batch["states"].shape[1]):
        prev = batch["actions"][:, t - 1] if t > 0 else None
        pred, state = model.step(batch["states"][:, t], batch["returns_to_go"][:, t], batch["timesteps"][:, t],
                                 prev, state)
        torch.testing.assert_close(pred, full[:, t], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("mixer", MIXERS)
def test_padded_positions_do_not_leak_into_real_ones(mixer):
    model = make_model(mixer)
    batch = make_batch()
    batch["mask"][0, :3] = False
    batch["mask"][1, :1] = False
    base = predict(model, batch)
    noisy = {k: v.clone() for k, v in batch.items()}
    pad = ~batch["mask"]
    noisy["states"][pad] = 100.0
    noisy["actions"][pad] = -0.7
    noisy["returns_to_go"][pad] = 9.0
    noisy["timesteps"][pad] = 7
    out = predict(model, noisy)
    torch.testing.assert_close(out[batch["mask"]], base[batch["mask"]], rtol=1e-5, atol=1e-6)


def test_loss_is_the_mean_over_real_timesteps_only():
    model = make_model("conv")
    batch = make_batch()
    batch["mask"][0, :4] = False
    preds = predict(model, batch)
    err = ((preds - batch["actions"]) ** 2).mean(-1)  # (B, K)
    expected = err[batch["mask"]].sum() / batch["mask"].sum()
    torch.testing.assert_close(model.loss(batch), expected)

    dmodel = make_model("conv", act_dim=4, discrete=True)
    dbatch = make_batch(act_dim=4, discrete=True)
    dbatch["mask"][2, :2] = False
    logits = predict(dmodel, dbatch)
    ce = F.cross_entropy(logits.reshape(-1, 4), dbatch["actions"].reshape(-1), reduction="none").reshape(3, 6)
    torch.testing.assert_close(dmodel.loss(dbatch), ce[dbatch["mask"]].mean())


@pytest.mark.parametrize("mixer", MIXERS)
def test_each_model_overfits_a_tiny_batch(mixer):
    model = make_model(mixer).train()
    batch = make_batch(B=4, K=5)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = model.loss(batch).item()
    for _ in range(300):
        loss = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert model.loss(batch).item() < first / 100


def test_atari_model_reads_frame_stacks_and_steps_like_forward():
    model = make_model("mamba", act_dim=6, discrete=True, state_shape=(4, 84, 84)).double()
    g = torch.Generator().manual_seed(0)
    B, K = 2, 3
    frames = torch.randint(0, 256, (B, K, 4, 84, 84), generator=g, dtype=torch.uint8)
    actions = torch.randint(0, 6, (B, K), generator=g)
    rtg = torch.rand(B, K, 1, generator=g, dtype=torch.float64)
    ts = torch.arange(K).repeat(B, 1)
    logits = model(frames, actions, rtg, ts)
    assert logits.shape == (B, K, 6)
    state = model.init_state(B)
    for t in range(K):
        out, state = model.step(frames[:, t], rtg[:, t], ts[:, t], actions[:, t - 1] if t else None, state)
        torch.testing.assert_close(out, logits[:, t], rtol=1e-9, atol=1e-10)


def test_mamba_keeps_its_own_initialisation_inside_the_model():
    model = make_model("mamba")
    mixer = model.layers[0].mixer
    dt = F.softplus(mixer.dt_proj.bias)
    assert dt.min() >= 1e-4 - 1e-9 and dt.max() <= 0.1 + 1e-6
    torch.testing.assert_close(mixer.A_log[0], torch.log(torch.arange(1, 17, dtype=torch.float32)))
    # the GPT-2 init did reach the model's own layers
    assert abs(model.embed_state.weight.std().item() - 0.02) < 0.01


def test_rc_ablation_removes_the_channel_mlp():
    with_mlp = make_model("mamba")
    rc = make_model("mamba", channel_mlp=False)
    assert rc.layers[0].mlp is None
    d = 32
    assert with_mlp.num_parameters() - rc.num_parameters() == 2 * (d * 4 * d + 4 * d + 4 * d * d + d + 2 * d)


def test_bad_inputs_name_what_was_expected():
    model = make_model("conv")
    b = make_batch()
    with pytest.raises(ValueError, match=r"states must have shape \(B, K, 5\)"):
        model(b["states"][..., :4], b["actions"], b["returns_to_go"], b["timesteps"], b["mask"])
    with pytest.raises(ValueError, match="actions must have shape"):
        model(b["states"], b["actions"][..., :2], b["returns_to_go"], b["timesteps"], b["mask"])
    with pytest.raises(ValueError, match="timesteps must be an integer tensor"):
        model(b["states"], b["actions"], b["returns_to_go"], b["timesteps"].float(), b["mask"])
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        model(b["states"], b["actions"], b["returns_to_go"], b["timesteps"], b["mask"].float())
    with pytest.raises(UserError, match="model.mixer must be one of mamba"):
        make_model("transformer")
    with pytest.raises(ValueError, match="state_shape"):
        DecisionModel(ModelConfig(mixer="conv", d_model=16), (3, 4), 2, discrete=False)
    assert not math.isnan(float(model.loss(b).detach()))
