"""The public DDCL layer (channel.torch): the same noise, integers and bits as the wire,
the straight-through gradient, the learned prior as the range model, typed errors."""

from __future__ import annotations

import copy
import io
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from agents.message import MessageChannel
from channel import (ChannelError, DeltaError, DtypeError, LayerError, NoiseKey, QuantizerError, ShapeError, codecs,
                     quantize, uniform_torch)
from channel.rate import RATE_LOSSES, FactorizedPrior, rate_bits
from channel.torch import DDCL
from tests.conftest import DEVICES

finite = st.floats(-40, 40, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(z=hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=6), elements=finite),
       delta=st.sampled_from([0.05, 0.2, 1.0, 3.0]), step=st.integers(-(2**40), 2**40),
       sender=st.integers(0, 255), codec=st.sampled_from(codecs.NAMES))
def test_forward_is_the_wire_bit_for_bit(z, delta, step, sender, codec):
    """What a trained policy's layer computes is what an agent process sends and what its
    peers reconstruct from the bytes: z_hat, the integers and the bit count."""
    layer = DDCL(z.shape[-1], delta=delta, codec=codec, run_seed=12345, epoch_seed=77)
    z_hat = layer(torch.from_numpy(z), step, sender)
    sent = layer.encode(z, step, sender)
    assert np.array_equal(z_hat.numpy(), sent.z_hat) and np.array_equal(layer.symbols().numpy(), sent.symbols)
    assert layer.bits() == sent.bits == layer.codec.encode_bits(sent.symbols.reshape(-1))[1]
    heard = layer.decode(sent.payload, z.shape, step, sender)
    assert np.array_equal(heard, sent.z_hat)
    err = z_hat.double().numpy() - z.astype(np.float64)
    assert np.all(np.abs(err) <= delta / 2 * (1 + 1e-5) + 1e-6)
    # the noise is the agents' own stream: key (run seed, epoch seed, sender), counter step
    u = uniform_torch(z.size, NoiseKey(12345, 77, sender), step).view(z.shape)
    want, _ = quantize(torch.from_numpy(z), delta, u)
    assert torch.equal(z_hat, want)


def test_a_message_channel_frame_carries_the_layers_message():
    """The networked agents' MessageChannel wraps the same layer: a frame heard by a peer
    holds the z_hat the layer gave in training (run seed, epoch seed, sender, step alike)."""
    torch.manual_seed(0)
    z = torch.randn(3, 4)
    channel = MessageChannel.build([codecs.get("rice")] * 2, 4, 0.2, run_seed=5)
    z_hat_tx, data, nbits = channel.speak(z, 1, step=40, seed=9)
    sender, z_hat_rx, (step, seed) = channel.hear(data, 40, lambda s: 9, (3, 4))
    trained = DDCL(4, delta=0.2, codec="rice", run_seed=5, epoch_seed=9)
    z_hat = trained(z, 40, 1)
    assert (sender, step, seed) == (1, 40, 9) and nbits == trained.bits()
    assert np.array_equal(z_hat.numpy(), z_hat_tx) and np.array_equal(z_hat.numpy(), z_hat_rx)


def test_a_policy_trained_with_the_layer_sends_on_the_wire_what_the_layer_computed():
    """A speaker trained through the layer with a learned prior and learned steps, then
    handed to the agents' message path as a checkpoint hands it (its exported range model
    and steps, agents/agent.py): the frame's z_hat, its bits and what a peer decodes are
    the trained layer's own, bit for bit. (tests/test_learned_delta.py runs such a
    checkpoint in real agent processes against this in-process path.)"""
    torch.manual_seed(5)
    speaker = torch.nn.Linear(6, 3)
    layer = DDCL(3, delta=0.3, codec="range", rate_loss="expected", run_seed=21, epoch_seed=4, learn_delta=True)
    opt = torch.optim.Adam([*speaker.parameters(), *layer.parameters()], lr=0.05)
    obs = torch.randn(32, 6)
    target = torch.randn(32, 3)
    for step in range(20):  # a task that wants precision, a rate that wants brevity
        z_hat = layer(speaker(obs), step, 2)
        loss = (z_hat - target).pow(2).mean() + 0.01 * layer.rate_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert layer.delta != (0.3,) * 3 and layer.export_model().probs.shape == (3, 34)  # both learned
    spec = {"models": [None, None, layer.export_model().to_dict()], "deltas": [0.3, 0.3, list(layer.delta)]}
    wire = MessageChannel.from_checkpoint(spec, "range", 3, 3, 0.3, run_seed=21)
    with torch.no_grad():
        z = speaker(obs)
        z_hat = layer(z, 40, 2)
    sent_z_hat, data, nbits = wire.speak(z, 2, step=40, seed=4)
    sender, heard, _ = wire.hear(data, 40, lambda s: 4, (32, 3))
    assert sender == 2 and nbits == layer.bits()
    assert np.array_equal(sent_z_hat, z_hat.numpy()) and np.array_equal(heard, z_hat.numpy())


@pytest.mark.parametrize("device", DEVICES)
def test_straight_through_gradient_and_device(device):
    torch.manual_seed(1)
    layer = DDCL(4, delta=0.3, rate_loss="surrogate").to(device)
    z = (3 * torch.randn(16, 4, device=device)).requires_grad_()
    z_hat = layer(z, 7, 2)
    g = torch.randn_like(z)
    (z_hat * g).sum().backward()
    assert torch.equal(z.grad, g)  # d z_hat / d z = 1, element by element
    cpu = DDCL(4, delta=0.3)(z.detach().cpu(), 7, 2)
    assert torch.equal(z_hat.detach().cpu(), cpu)  # any device draws the same dither, bit for bit


def test_several_senders_in_one_tensor_draw_each_senders_own_noise():
    torch.manual_seed(2)
    layer = DDCL(3, delta=0.5, codec="expgolomb")
    z = torch.randn(5, 2, 3)
    together = layer(z, 11, [4, 9])
    bits = layer.bits()
    per_message = layer.bits(per_message=True)
    alone = [layer(z[:, k].contiguous(), 11, s) for k, s in enumerate([4, 9])]
    assert torch.equal(together, torch.stack(alone, dim=1))
    each = [layer.encode(z[:, k].numpy(), 11, s).bits for k, s in enumerate([4, 9])]
    assert bits == sum(each)  # one stream per sender, as each agent process would send it
    assert per_message.shape == (5, 2)
    codec = codecs.get("expgolomb")
    m = layer.encode(z[:, 1].numpy(), 11, 9).symbols
    assert [per_message[b, 1] for b in range(5)] == [codec.encode_bits(m[b])[1] for b in range(5)]
    with pytest.raises(ShapeError, match="3 senders"):
        layer(z, 11, [1, 2, 3])
    with pytest.raises(ShapeError, match="0 senders"):
        layer(z, 11, [])


@pytest.mark.parametrize("loss", RATE_LOSSES)
def test_rate_loss_is_the_selected_loss_of_the_last_call(loss):
    torch.manual_seed(3)
    layer = DDCL(4, delta=0.2, codec="rice", rate_loss=loss, prior_radius=8)
    z = torch.randn(6, 4, requires_grad=True)
    z_hat = layer(z, 0, 0)
    prior = FactorizedPrior(4, 8) if loss in ("entropy", "expected") else None
    want = rate_bits(loss, z, z_hat, 0.2, codecs.get("rice"), prior)
    assert torch.equal(layer.rate_loss("none"), want)
    assert torch.equal(layer.rate_loss("sum"), want.sum()) and torch.equal(layer.rate_loss(), want.mean())
    layer.rate_loss().backward()
    assert z.grad.abs().sum() > 0
    if prior is not None:  # the prior learns from the same term
        assert layer.prior.logits.grad.abs().sum() > 0
        assert [name for name, _ in layer.named_parameters()] == ["prior.logits"]
    else:
        assert list(layer.parameters()) == []


def test_the_learned_prior_is_the_range_model_saved_with_the_layer(tmp_path):
    torch.manual_seed(4)
    layer = DDCL(2, delta=0.25, codec="range", rate_loss="expected", prior_radius=6)
    z = 0.1 * torch.randn(64, 2)
    opt = torch.optim.Adam(layer.parameters(), lr=0.1)
    before = layer.codec
    for _ in range(30):  # messages near zero: the prior learns to expect zeros
        layer(z, 0, 0)
        opt.zero_grad()
        layer.rate_loss().backward()
        opt.step()
    layer(z, 0, 0)
    after = layer.codec
    assert after is not before and after.name == "range"
    np.testing.assert_array_equal(after.model.probs, layer.export_model().probs)
    assert layer.bits() == after.encode_bits(layer.symbols().numpy().reshape(-1))[1]
    assert layer.bits() < before.encode_bits(layer.symbols().numpy().reshape(-1))[1]
    # saved and loaded as a state dict, with torch.load's safe reader
    buf = io.BytesIO()
    torch.save(layer.state_dict(), buf)
    buf.seek(0)
    again = DDCL(2, delta=0.25, codec="range", rate_loss="expected", prior_radius=6)
    again.load_state_dict(torch.load(buf, weights_only=True))
    again(z, 0, 0)
    assert again.bits() == layer.bits()
    np.testing.assert_array_equal(again.export_model().probs, layer.export_model().probs)
    for other in (dict(delta=0.5, prior_radius=6), dict(delta=0.25, prior_radius=7)):
        with pytest.raises(LayerError, match="does not fit this layer"):
            DDCL(2, codec="range", rate_loss="expected", **other).load_state_dict(layer.state_dict())
    # an explicit codec stays the caller's; a model the codec can be built from
    fixed = codecs.get("range", model=codecs.CategoricalModel.laplace(1.0, 8))
    assert DDCL(2, codec=fixed, rate_loss="expected").codec is fixed
    with pytest.raises(LayerError, match="learns no prior"):
        DDCL(2).export_model()


def test_a_called_layer_copies_and_pickles():
    """Target networks deep-copy the policy: the layer's last call (a graph) stays behind
    and the range codec, whose constriction models do not pickle, is rebuilt."""
    layer = DDCL(4, codec="range", rate_loss="entropy")
    layer(torch.randn(2, 4, requires_grad=True), 0, 0)
    twin = copy.deepcopy(layer)
    with pytest.raises(LayerError, match="not been called"):
        twin.bits()
    twin(torch.zeros(2, 4), 0, 0)
    assert twin.bits() > 0
    buf = io.BytesIO()
    torch.save(layer, buf)
    assert buf.tell() > 0


@pytest.mark.parametrize("make, error, match", [
    (lambda: DDCL(4)(torch.zeros(2, 4, dtype=torch.float64), 0, 0), DtypeError, "float32"),
    (lambda: DDCL(4)(torch.zeros(2, 4, dtype=torch.int64), 0, 0), DtypeError, "float32"),
    (lambda: DDCL(4)(torch.zeros(2, 4, dtype=torch.bfloat16), 0, 0), DtypeError, "float32"),
    (lambda: DDCL(4)([0.0] * 4, 0, 0), DtypeError, "tensor"),
    (lambda: DDCL(4)(torch.zeros(2, 3), 0, 0), ShapeError, "dim=4"),
    (lambda: DDCL(4)(torch.tensor(1.0), 0, 0), ShapeError, "dim=4"),
    (lambda: DDCL(0), ShapeError, "positive integer"),
    (lambda: DDCL(4, delta=0.0), DeltaError, "finite and positive"),
    (lambda: DDCL(4, delta=-0.1), DeltaError, "finite and positive"),
    (lambda: DDCL(4, delta=float("nan")), DeltaError, "finite and positive"),
    (lambda: DDCL(4, delta=float("inf")), DeltaError, "finite and positive"),
    (lambda: DDCL(4, delta="big"), DeltaError, "positive number"),
    (lambda: DDCL(4, delta=[0.1, 0.2]), ShapeError, "one per dimension"),
    (lambda: DDCL(4, rate_loss="vibes"), LayerError, "surrogate, codelength"),
    (lambda: DDCL(4, codec="zip"), ChannelError, "unknown codec"),
    (lambda: DDCL(4, run_seed=2**32), LayerError, "run_seed"),
    (lambda: DDCL(4, epoch_seed=-1), LayerError, "epoch_seed"),
    (lambda: DDCL(4, rate_loss="entropy", prior_radius=0), LayerError, "prior_radius"),
    (lambda: DDCL(4)(torch.zeros(2, 4), 1.5, 0), LayerError, "step must be an integer"),
    (lambda: DDCL(4)(torch.zeros(2, 4), True, 0), LayerError, "step must be an integer"),
    (lambda: DDCL(4)(torch.zeros(2, 4), 0, 256), LayerError, "sender must be in 0..255"),
    (lambda: DDCL(4)(torch.full((2, 4), float("nan")), 0, 0), QuantizerError, "finite"),
    (lambda: DDCL(4, delta=1e-9)(torch.full((2, 4), 10.0), 0, 0), QuantizerError, "below"),
    (lambda: DDCL(4).bits(), LayerError, "not been called"),
    (lambda: DDCL(4).rate_loss(), LayerError, "not been called"),
    (lambda: DDCL(4).decode(b"", (2, 3), 0, 0), ShapeError, "dim=4"),
])
def test_bad_input_raises_typed_errors(make, error, match):
    with pytest.raises(error, match=match) as info:
        make()
    assert isinstance(info.value, (ChannelError, ValueError))


def test_unknown_reduction_and_per_dimension_steps():
    layer = DDCL(2, delta=[0.1, 1.0])
    z = torch.tensor([[0.34, 0.34]])
    z_hat = layer(z, 3, 0)
    assert abs(z_hat[0, 0] - 0.34) <= 0.05 + 1e-6 and abs(z_hat[0, 1] - 0.34) <= 0.5 + 1e-6
    assert np.array_equal(layer.encode(z, 3, 0).z_hat, z_hat.numpy())
    with pytest.raises(LayerError, match="reduction"):
        layer.rate_loss("avg")


def test_the_layer_imports_no_sockets_and_nothing_outside_channel():
    # (torch itself imports asyncio; the layer adds no socket library and nothing of ours)
    code = ("import sys, channel.torch; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('zmq', 'broker', 'agents', 'aiomqtt', 'pettingzoo')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert r.stdout.strip() == "[]"


def test_the_docs_snippet_runs(capsys):
    """docs/layer.md's dozen lines run as printed, and the bits they print are real."""
    import re

    from tests.conftest import ROOT

    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "layer.md").read_text(), re.S)
    exec(compile(blocks[0], "docs/layer.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["0", "1", "2"]
    assert all(0 < float(line.split()[-1]) < 32 * 4 for line in lines)


# hooks whose meaning torch or PettingZoo define, not this project
_FRAMEWORK_HOOKS = {"extra_repr", "get_extra_state", "set_extra_state", "action_space", "observation_space"}


def _documented(name: str, obj) -> list[str]:
    """What obj's docstring lacks of the Args / Returns sections its signature calls for."""
    import inspect

    doc = inspect.getdoc(obj) or ""
    if not doc:
        return [f"{name}: no docstring"]
    if inspect.isclass(obj):
        if issubclass(obj, (Exception, tuple, int)):  # errors, named tuples, enums: no arguments to describe
            return []
        params = [p for p in inspect.signature(obj).parameters.values() if p.kind is not p.VAR_KEYWORD]
        return [f"{name}: no Args:"] if params and "Args:" not in doc else []
    sig = inspect.signature(obj)
    params = [p for p in sig.parameters if p not in ("self", "cls")]
    missing = [f"{name}: no Args:"] if params and "Args:" not in doc else []
    if sig.return_annotation not in ("None", None) and "Returns:" not in doc:
        missing.append(f"{name}: no Returns:")
    return missing


def test_the_public_surface_is_listed_once_and_documented():
    """channel.PUBLIC is the one list of what is public: every name in it exists, and every
    public function, class and method documents its arguments and what it returns."""
    import importlib
    import inspect

    import channel

    assert set(channel.PUBLIC["channel"]) == set(channel.__all__) - {"codecs", "frame", "rate", "torch", "PUBLIC"}
    missing = []
    for module, names in channel.PUBLIC.items():
        mod = importlib.import_module(module)
        for name in names:
            obj = getattr(mod, name)  # AttributeError: a listed name that is gone
            if not callable(obj):
                continue
            missing += _documented(f"{module}.{name}", obj)
            if inspect.isclass(obj) and not issubclass(obj, (Exception, tuple, int)):
                for attr, member in vars(obj).items():
                    if attr.startswith("_") or attr in _FRAMEWORK_HOOKS:
                        continue
                    if isinstance(member, (classmethod, staticmethod)):
                        member = member.__func__
                    if inspect.isfunction(member):
                        missing += _documented(f"{module}.{name}.{attr}", member)
    assert not missing, "\n".join(missing)
