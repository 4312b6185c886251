"""The decision model: Decision Transformer with a pluggable token mixer.

Paper §3 (Eq. 6-12) and REFERENCE §2. The last K timesteps of a trajectory become 3K
tokens R_1, s_1, a_1, R_2, s_2, a_2, ...; each modality has its own embedding, a learned
timestep embedding is added to the three tokens of a timestep, then a LayerNorm (Eq. 7).
(The Atari release, like DT's Atari model, instead adds one global timestep embedding per
window and a learned per-token position: ModelConfig.timestep_embedding=global_position.)
N layers of

    x = x + TokenMixer(LN(x))          (Eq. 8)
    x = x + ChannelMLP(LN(x))          (Eq. 9; switched off by the "RC" ablation)

and a final LayerNorm. The action a_t is read from the hidden state of the state token
s_t: a tanh head for continuous actions, logits for discrete ones.

Padding convention, the same in training and inference: the windows are LEFT-padded,
`mask` is False at padded timesteps, and the embeddings of padded tokens are set to
exactly zero before the first layer. Attention additionally hides padded keys. (The
paper's release pads actions with -10 in training and 0 at evaluation; Mamba has no
mask, so that inconsistency reaches the model. We do not repeat it.)

The same model runs recurrently: `init_state` + `step` feed one timestep's tokens
through every mixer's own `step`, O(1) per token for Mamba, conv and S4. A mixer whose
MIXERS entry names a fused step runs all layers in one call instead (DMamba on the CPU:
one numba kernel, fused_step.py, imported on first use).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from decision_mamba.errors import UserError
from decision_mamba.mixers import DEFAULT_MIXER, build_mixer, describe_mixers, fused_step_module, mixer_kwargs, mixer_spec

# The recurrent step cannot run the release's Atari timestep embedding: every step gives
# the whole window a new global embedding (the current step's), so no state carries over.
RECURRENT_GLOBAL_POSITION = ("eval.mode=recurrent cannot run model.timestep_embedding=global_position (each step "
                             "re-embeds the whole window with the current step); use eval.mode=window")


@dataclass
class ModelConfig:
    """Architecture. Defaults are the paper's gym setting (Table 5)."""

    mixer: str = DEFAULT_MIXER  # the token mixer (decision_mamba/mixers.py, MIXERS)
    d_model: int = 128  # embedding width
    n_layer: int = 3  # residual blocks
    dropout: float = 0.1  # dropout of embeddings and blocks
    channel_mlp: bool = True  # False = the paper's "RC" ablation (Table 3)
    max_ep_len: int = 1000  # size of the timestep embedding table
    # attention (DT): 1 head for gym, 8 for Atari
    n_head: int = 1
    # conv (DC): kernel size over tokens
    conv_window: int = 6
    # mamba (DMamba): the defaults of the original implementation
    d_state: int = 16  # SSM state size N
    d_conv: int = 4  # width of the causal depthwise convolution
    expand: int = 2  # inner width ED = expand * d_model
    # auto | cuda | parallel | fused | reference (selective_scan.resolve_scan_backend says which
    # runs and why). On the CPU, auto and fused also run inference steps
    # through the fused kernel (fused_step.py); reference keeps every step in PyTorch.
    scan_backend: str = "auto"
    # mamba2 (DMamba-2, decision_mamba/mamba2.py): d_state, d_conv and expand above, and
    headdim: int = 16  # channels per SSD head: ED / headdim heads, each with one A (mamba_ssm's default 64)
    ngroups: int = 1  # groups of heads sharing one B and C (like multi-query attention's shared keys)
    chunk_size: int = 256  # SSD block length (mamba_ssm's default); a shorter sequence is one block
    # s4 (DS4)
    s4_d_state: int = 64  # state size of the S4 kernel
    # Switches that reproduce the authors' release (decision_mamba/protocols.py names them):
    # init: "mamba" = GPT-2 init (normal 0.02) outside the mixers, mamba_ssm's / S4D's
    # inside; "release" = what the release's HF GPT2Model.init_weights() leaves: normal
    # 0.02 on every Linear and Embedding inside the layers (Mamba's projections too,
    # dt_proj.bias = 0), PyTorch's defaults on the embeddings and the gym action head.
    init: str = "mamba"
    atari_embed_ln: bool = True  # False: no LayerNorm on Atari tokens (the release's, DT's Atari model)
    # per_step: one learned embedding per timestep, added to its three tokens (DT's gym model);
    # global_position: the Atari release's (DT's Atari model): one global-table embedding per
    # window, of the window's first step in training and of the current step at evaluation,
    # plus a learned embedding of each token's position in the window (3K rows).
    timestep_embedding: str = "per_step"

    def mixer_kwargs(self) -> dict:
        return mixer_kwargs(self)  # the options its MIXERS entry names

    @classmethod
    def field_help(cls) -> dict[str, str]:
        """--help's text for the fields whose choices live in a registry (confighelp.py)."""
        return {"mixer": f"the token mixer: {describe_mixers()}"}


class ChannelMLP(nn.Module):
    """The point-wise feed-forward network of Eq. (9): Linear(d, 4d), GELU, Linear(4d, d), Dropout."""

    def __init__(self, d_model: int, dropout: float):
        super().__init__()
        self.fc = nn.Linear(d_model, 4 * d_model)
        self.proj = nn.Linear(4 * d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class DecisionLayer(nn.Module):
    """One layer of Eq. (8)-(9): a pre-norm token mixer and an optional channel MLP."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_mixer = nn.LayerNorm(cfg.d_model)
        self.mixer = build_mixer(cfg.mixer, cfg.d_model, **cfg.mixer_kwargs())
        self.ln_mlp = nn.LayerNorm(cfg.d_model) if cfg.channel_mlp else None
        self.mlp = ChannelMLP(cfg.d_model, cfg.dropout) if cfg.channel_mlp else None

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        x = x + self.mixer(self.ln_mixer(x), key_padding_mask=key_padding_mask)
        if self.mlp is not None:
            x = x + self.mlp(self.ln_mlp(x))
        return x

    def step(self, x: Tensor, state: tuple) -> tuple[Tensor, tuple]:
        """T new tokens (B, T, d) given the mixer's state of everything before them.

        Layer by layer rather than token by token: the MLP and the residuals are
        position-wise, so only the mixer has to see the tokens in order (in one call
        where it has `step_chunk`).
        """
        h = self.ln_mixer(x)
        if hasattr(self.mixer, "step_chunk"):
            y, state = self.mixer.step_chunk(h, state)
        else:
            ys = []
            for t in range(h.shape[1]):
                y_t, state = self.mixer.step(h[:, t], state)
                ys.append(y_t)
            y = torch.stack(ys, dim=1)
        x = x + y
        if self.mlp is not None:
            x = x + self.mlp(self.ln_mlp(x))
        return x, state


class AtariEncoder(nn.Module):
    """The DT Atari state encoder: three convolutions on the 4-frame stack, then Linear + tanh."""

    def __init__(self, d_model: int, in_frames: int = 4):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_frames, 32, 8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
            nn.Flatten(),
        )
        self.proj = nn.Sequential(nn.Linear(64 * 7 * 7, d_model), nn.Tanh())

    def forward(self, frames: Tensor) -> Tensor:
        # frames (..., 4, 84, 84) uint8 in [0, 255]
        lead = frames.shape[:-3]
        x = frames.reshape(-1, *frames.shape[-3:]).to(self.proj[0].weight.dtype) / 255.0
        return self.proj(self.conv(x)).reshape(*lead, -1)


class DecisionModel(nn.Module):
    """Return-conditioned sequence model over (R, s, a) tokens with any token mixer.

    state_shape: (obs_dim,) for vector observations, (4, 84, 84) for Atari frame stacks.
    act_dim: the action size (continuous) or the number of actions (discrete).
    context_len: K, the longest window; needed (and only used) by timestep_embedding=global_position,
    whose position table has one row per token of a K-step window.
    """

    def __init__(self, cfg: ModelConfig, state_shape: tuple[int, ...], act_dim: int, discrete: bool,
                 context_len: int = 0):
        super().__init__()
        self.cfg = cfg
        self.state_shape = tuple(state_shape)
        self.act_dim = act_dim
        self.discrete = discrete
        d = cfg.d_model

        # Eq. (7): one embedding per modality. Atari follows DT's Atari model (tanh on
        # every embedding, an embedding table for actions); gym follows DT's gym model.
        self.embed_timestep = nn.Embedding(cfg.max_ep_len, d)  # global_position: the global table
        self.embed_position: nn.Embedding | None = None
        if cfg.timestep_embedding == "global_position":
            if context_len <= 0:
                raise ValueError("model.timestep_embedding=global_position needs the context length: "
                                 "DecisionModel(..., context_len=K)")
            self.embed_position = nn.Embedding(3 * context_len, d)  # the release's pos_emb
        elif cfg.timestep_embedding != "per_step":
            raise ValueError(f"timestep_embedding must be per_step or global_position, got {cfg.timestep_embedding!r}")
        if len(self.state_shape) == 3:
            self.embed_state: nn.Module = AtariEncoder(d, in_frames=self.state_shape[0])
        elif len(self.state_shape) == 1:
            self.embed_state = nn.Linear(self.state_shape[0], d)
        else:
            raise ValueError(
                f"state_shape must be (obs_dim,) or (frames, height, width), got {self.state_shape}"
            )
        if discrete:
            self.embed_action: nn.Module = nn.Sequential(nn.Embedding(act_dim, d), nn.Tanh())
            self.embed_return: nn.Module = nn.Sequential(nn.Linear(1, d), nn.Tanh())
        else:
            self.embed_action = nn.Linear(act_dim, d)
            self.embed_return = nn.Linear(1, d)
        # Atari without embed_ln (the release's): an identity keeps the forward code one path.
        self.embed_ln = nn.LayerNorm(d) if cfg.atari_embed_ln or not discrete else nn.Identity()
        # train.padding=release: padded tokens are embedded like real ones (the release's
        # Mamba sees no mask); set by the entry points from TrainConfig.padding.
        self.zero_padded_tokens = True
        self.embed_dropout = nn.Dropout(cfg.dropout)

        self.layers = nn.ModuleList([DecisionLayer(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(d)
        if discrete:
            self.action_head: nn.Module = nn.Linear(d, act_dim, bias=False)
        else:
            self.action_head = nn.Sequential(nn.Linear(d, act_dim), nn.Tanh())
        if cfg.init == "release":
            self._init_weights_release()
        else:
            self._init_weights()

    def _init_weights_release(self) -> None:
        """The initialisation the paper's numbers were trained from.

        The release builds its layers inside HF's GPT2Model, whose init_weights() applies
        GPT-2's _init_weights to every module *inside* it (the blocks and ln_f): every
        nn.Linear weight ~ N(0, 0.02) with bias 0 (Mamba's in_proj, x_proj, dt_proj, out_proj
        too: dt_proj.bias = 0, i.e. dt = softplus(0) for every channel), nn.Embedding
        ~ N(0, 0.02), LayerNorm 1 / 0; Conv1d, A_log and D are no Linear and keep their
        init. The embeddings, embed_ln and the gym action head live outside GPT2Model and
        keep PyTorch's defaults (the timestep table N(0, 1)). The Atari release (minGPT)
        applies the same rule to its blocks, ln_f and head, re-draws the action embedding
        N(0, 0.02), and starts its position tables (global_pos_emb, pos_emb) at zero: here the
        timestep table and, with timestep_embedding=global_position, the position table.
        """
        for module in [*self.layers, self.ln_f]:
            for sub in module.modules():
                if isinstance(sub, (nn.Linear, nn.Embedding)):
                    nn.init.normal_(sub.weight, mean=0.0, std=0.02)
                    if getattr(sub, "bias", None) is not None:
                        nn.init.zeros_(sub.bias)
                elif isinstance(sub, nn.LayerNorm):
                    nn.init.ones_(sub.weight)
                    nn.init.zeros_(sub.bias)
        if self.discrete:
            nn.init.normal_(self.action_head.weight, mean=0.0, std=0.02)
            nn.init.normal_(self.embed_action[0].weight, mean=0.0, std=0.02)
            nn.init.zeros_(self.embed_timestep.weight)
            if self.embed_position is not None:
                nn.init.zeros_(self.embed_position.weight)

    def _init_weights(self) -> None:
        """GPT-2 init (normal 0.02, zero bias) for everything but mixers with their own init."""
        keep = set()
        if mixer_spec(self.cfg.mixer).own_init:
            for layer in self.layers:
                keep.update(id(m) for m in layer.mixer.modules())
        for module in self.modules():
            if id(module) in keep:
                continue
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                bias = getattr(module, "bias", None)
                if bias is not None and not getattr(bias, "_no_reinit", False):
                    nn.init.zeros_(bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    # ------------------------------------------------------------------ inputs
    def _check_inputs(self, states: Tensor, actions: Tensor, returns_to_go: Tensor, timesteps: Tensor,
                      mask: Tensor | None) -> None:
        if states.dim() != 2 + len(self.state_shape) or tuple(states.shape[2:]) != self.state_shape:
            raise ValueError(f"states must have shape (B, K, {', '.join(map(str, self.state_shape))}), "
                             f"got {tuple(states.shape)}")
        B, K = states.shape[:2]
        expected_actions = (B, K) if self.discrete else (B, K, self.act_dim)
        if tuple(actions.shape) != expected_actions:
            raise ValueError(f"actions must have shape {expected_actions}, got {tuple(actions.shape)}")
        if self.discrete and actions.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"discrete actions must be int64 indices, got {actions.dtype}")
        if tuple(returns_to_go.shape) != (B, K, 1):
            raise ValueError(f"returns_to_go must have shape {(B, K, 1)}, got {tuple(returns_to_go.shape)}")
        if tuple(timesteps.shape) != (B, K) or timesteps.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"timesteps must be an integer tensor of shape {(B, K)}, "
                             f"got {tuple(timesteps.shape)} {timesteps.dtype}")
        if mask is not None and (tuple(mask.shape) != (B, K) or mask.dtype != torch.bool):
            raise ValueError(f"mask must be a bool tensor of shape {(B, K)}, got {tuple(mask.shape)} {mask.dtype}")
        if self.embed_position is not None and 3 * K > self.embed_position.num_embeddings:
            raise ValueError(f"a window of {K} steps is longer than the position table of "
                             f"model.timestep_embedding=global_position ({self.embed_position.num_embeddings // 3} steps)")

    def _embed(self, states: Tensor, actions: Tensor, returns_to_go: Tensor, timesteps: Tensor,
               mask: Tensor | None = None, global_timestep: Tensor | None = None) -> Tensor:
        """The three token embeddings of each timestep, timestep embedding added: (B, K, 3, d)."""
        tokens = torch.stack(
            [self.embed_return(returns_to_go), self.embed_state(states), self.embed_action(actions)],
            dim=-2,
        )  # (B, K, 3, d): R_t, s_t, a_t
        if self.embed_position is None:
            return self.embed_ln(tokens + self.embed_timestep(timesteps).unsqueeze(-2))
        # global_position. Positions count from the window's first real step (the release never
        # pads, so its windows start at position 0; a left-padded window here starts where its
        # real steps do, and its pads, at position 0, are zeroed or masked downstream).
        B, K = timesteps.shape
        real = mask if mask is not None else torch.ones((B, K), dtype=torch.bool, device=timesteps.device)
        step = (real.long().cumsum(dim=1) - 1).clamp(min=0)  # (B, K) index from the first real step
        token = 3 * step[..., None] + torch.arange(3, device=step.device)  # (B, K, 3)
        if global_timestep is None:  # training: the window's first real step (the release's dataset)
            first = (K - real.long().sum(dim=1)).clamp(max=K - 1)  # (B,)
            global_timestep = timesteps.gather(1, first[:, None])[:, 0]
        time = self.embed_timestep(global_timestep)[:, None, None, :] + self.embed_position(token)  # (B, K, 3, d)
        return self.embed_ln(tokens + time)

    # ---------------------------------------------------------- parallel forward
    def forward(self, states: Tensor, actions: Tensor, returns_to_go: Tensor, timesteps: Tensor,
                mask: Tensor | None = None, global_timestep: Tensor | None = None) -> Tensor:
        """Action predictions (B, K, act_dim) (tanh-squashed) or logits (B, K, n_actions).

        states (B, K, *state_shape); actions (B, K, act_dim) float or (B, K) int64;
        returns_to_go (B, K, 1); timesteps (B, K) int64; mask (B, K) bool, True = real.
        global_timestep (B,) int64, timestep_embedding=global_position only: the step whose
        global embedding the whole window gets; None = the window's first real step (training).
        The release's evaluation passes the current step instead.
        """
        self._check_inputs(states, actions, returns_to_go, timesteps, mask)
        if global_timestep is not None and self.embed_position is None:
            raise ValueError("global_timestep is for model.timestep_embedding=global_position; "
                             "this model embeds each timestep (per_step)")
        B, K = states.shape[:2]
        x = self._embed(states, actions, returns_to_go, timesteps, mask, global_timestep)  # (B, K, 3, d)
        key_padding_mask = None
        if mask is not None:
            if self.zero_padded_tokens:
                x = x * mask[:, :, None, None]
            key_padding_mask = mask.repeat_interleave(3, dim=1)  # (B, 3K)
        x = self.embed_dropout(x.reshape(B, 3 * K, -1))  # (B, 3K, d) interleaved R, s, a
        for layer in self.layers:
            x = layer(x, key_padding_mask)
        x = self.ln_f(x)
        return self.action_head(x[:, 1::3])  # predicted from the state tokens s_t

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        """Eq. (12): MSE (continuous) or cross-entropy (discrete), averaged over real timesteps."""
        preds = self(batch["states"], batch["actions"], batch["returns_to_go"], batch["timesteps"],
                     batch["mask"])
        mask = batch["mask"]
        if self.discrete:
            return F.cross_entropy(preds[mask], batch["actions"][mask])
        return F.mse_loss(preds[mask], batch["actions"][mask])

    # --------------------------------------------------------- recurrent inference
    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> list[tuple]:
        """The recurrent state of every layer's mixer before the first token."""
        if not mixer_spec(self.cfg.mixer).recurrent:
            raise ValueError(f"the {self.cfg.mixer} mixer has no recurrent step (its MIXERS entry says recurrent=False); "
                             f"evaluate with eval.mode=window")
        dtype = self.ln_f.weight.dtype
        return [layer.mixer.init_state(batch_size, device=device, dtype=dtype) for layer in self.layers]

    def step(self, state: Tensor, return_to_go: Tensor, timestep: Tensor, prev_action: Tensor | None,
             inference_state: list[tuple]) -> tuple[Tensor, list[tuple]]:
        """Advance by one environment step; returns the action prediction for a_t.

        Feeds a_{t-1} (unless this is the first step), R_t and s_t, in the token order of
        the parallel forward, so that iterating `step` over a sequence reproduces `forward`
        without padding. state (B, *state_shape); return_to_go (B, 1); timestep (B,);
        prev_action (B, act_dim) / (B,) or None at t = 0.
        """
        if self.embed_position is not None:
            raise UserError(RECURRENT_GLOBAL_POSITION)
        if tuple(state.shape[1:]) != self.state_shape:
            raise ValueError(f"state must have shape (B, {', '.join(map(str, self.state_shape))}), "
                             f"got {tuple(state.shape)}")
        time = self.embed_timestep(timestep)  # (B, d)
        tokens = [self.embed_return(return_to_go) + time, self.embed_state(state) + time]
        if prev_action is not None:
            # a_{t-1} carries the timestep of its own step.
            prev_time = self.embed_timestep((timestep - 1).clamp(min=0))
            tokens.insert(0, self.embed_action(prev_action) + prev_time)
        x = self.embed_dropout(self.embed_ln(torch.stack(tokens, dim=1)))  # (B, 2 or 3, d)
        fused = fused_step_module(self.cfg.mixer)  # DMamba inference on the CPU: one numba kernel
        if fused is not None and fused.fused_step_applies(self, x):
            x, new_state = fused.fused_layers_step(self.layers, x, inference_state)
        else:
            new_state = []
            for layer, layer_state in zip(self.layers, inference_state):
                x, layer_state = layer.step(x, layer_state)
                new_state.append(layer_state)
        return self.action_head(self.ln_f(x[:, -1])), new_state

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
