"""The GAN trainer's fast paths: sub-batch terms, the batched decode, the one-channel head, determinism."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from attack_toys import toy_sliceset
from torch import nn

from attacks.gan_synthetic import DomainGenerator, GanConfig, GanTrainer, lsgan_loss, sample_path_codes, shortest_path_loss
from attacks.gan_synthetic.training import sub_batch

SMALL = GanConfig(epochs=1, batch_size=4, width=4, blocks=2, disc_width=4)
FULL_BATCH = dict(recon_fraction=1.0, identity_fraction=1.0, path_fraction=1.0)


def _pair(n: int = 8, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, 1, size, size, generator=g)
    return a, 0.5 * a + 0.2 * torch.randn(n, 1, size, size, generator=g)


@pytest.mark.parametrize("batch, fraction, expected", [(8, 1.0, 8), (8, 0.5, 4), (8, 0.25, 2), (2, 0.25, 1), (3, 0.5, 2), (5, 0.01, 1)])
def test_sub_batch_rounds_to_at_least_one_row(batch, fraction, expected):
    assert sub_batch(batch, fraction) == expected


@pytest.mark.parametrize("name", ["recon_fraction", "identity_fraction", "path_fraction"])
@pytest.mark.parametrize("value", [0.0, -0.5, 1.5])
def test_fractions_outside_unit_interval_are_refused(name, value):
    with pytest.raises(ValueError, match=f"'{name}'.*Got {value}"):
        GanConfig(**{name: value})


def _reference_terms(trainer: GanTrainer, a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every term by its definition: each group decoded on its own, from the trainer's random draws."""
    c, g = trainer.config, trainer.generator
    n = len(a)
    n_rec, n_idt, n_path = (sub_batch(n, f) for f in (c.recon_fraction, c.identity_fraction, c.path_fraction))
    za_mu, zb_mu = g.encode(a), g.encode(b[:n_idt])
    mu = torch.cat([za_mu, zb_mu])
    noisy = mu + c.latent_noise * torch.randn(mu.shape, generator=trainer.rng)
    za, zb = noisy[:n], noisy[n:]
    d1, d2 = sample_path_codes(n_path, trainer.rng)
    fake = g.decode(za, 1.0)
    _, f1 = g.decode(za[:n_path], d1, return_features=True)
    _, f2 = g.decode(za[:n_path], d2, return_features=True)
    return {
        "gan": lsgan_loss(trainer.discriminator(fake), True),
        "recon": (g.decode(za[:n_rec], 0.0) - a[:n_rec]).abs().mean(),
        "identity": (g.decode(zb, 1.0) - b[:n_idt]).abs().mean(),
        "latent": 0.5 * ((za_mu**2).mean() + (zb_mu**2).mean()),
        "path": shortest_path_loss(f1, f2, d1, d2),
        "paired": (fake - b).abs().mean(),
    }


@pytest.mark.parametrize("fractions", [(1.0, 1.0, 1.0), (0.5, 0.5, 0.25), (0.25, 1.0, 0.5), (0.1, 0.1, 0.1)])
def test_batched_objective_matches_each_term_by_definition(fractions):
    """One batched decode with sub-batches and no head on the path rows gives the terms' own values."""
    recon, identity, path = fractions
    config = replace(SMALL, recon_fraction=recon, identity_fraction=identity, path_fraction=path)
    trainer = GanTrainer(config, "cpu", 1)
    a, b = _pair()
    state = trainer.rng.get_state()
    total, terms = trainer.generator_loss(a, b)
    trainer.rng.set_state(state)
    reference = _reference_terms(trainer, a, b)
    assert set(reference) <= set(terms)
    for name, value in reference.items():
        torch.testing.assert_close(terms[name], value, rtol=1e-5, atol=1e-6, msg=name)
    c = config
    weighted = (
        c.lambda_gan * reference["gan"] + c.lambda_recon * reference["recon"] + c.lambda_identity * reference["identity"]
        + c.lambda_latent * reference["latent"] + c.lambda_path * reference["path"] + c.lambda_paired * reference["paired"]
    )
    torch.testing.assert_close(total, weighted, rtol=1e-5, atol=1e-6)  # no term left out of the objective


def test_every_term_moves_the_generator():
    """Each term, alone, has a non-zero gradient on the generator: none is computed and then dropped."""
    trainer = GanTrainer(SMALL, "cpu", 2)
    a, b = _pair(4)
    _, terms = trainer.generator_loss(a, b)
    params = list(trainer.generator.parameters())
    for name in ("gan", "recon", "identity", "latent", "path", "paired"):
        grads = torch.autograd.grad(terms[name], params, retain_graph=True, allow_unused=True)
        assert any(g is not None and g.abs().sum() > 0 for g in grads), name


def test_one_channel_head_matches_a_plain_conv():
    torch.manual_seed(0)
    g = DomainGenerator(1, 4, 2)
    x = torch.randn(3, 4, 32, 32, requires_grad=True)
    fast = g.head(x)
    plain = nn.Conv2d.forward(g.head, x)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    fast_grads = torch.autograd.grad(fast.square().sum(), (x, g.head.weight, g.head.bias))
    plain_grads = torch.autograd.grad(plain.square().sum(), (x, g.head.weight, g.head.bias))
    for fast_grad, plain_grad in zip(fast_grads, plain_grads):
        torch.testing.assert_close(fast_grad, plain_grad, rtol=1e-4, atol=1e-4)
    assert fast.shape == (3, 1, 32, 32) and fast.is_contiguous()
    assert list(g.state_dict())[-2:] == ["head.weight", "head.bias"]  # generators saved before load unchanged


def _train(seed: int, config: GanConfig) -> tuple[list[torch.Tensor], list[float]]:
    data = toy_sliceset(cases=2, slices=5, size=32)  # 10 slices, batch 4: a trailing batch of 2
    trainer = GanTrainer(config, "cpu", seed)
    history = trainer.fit(np.clip(data.images[:, 4:5], -5, 5), data.images[:, 1:2])
    weights = [p.detach().clone() for p in (*trainer.generator.parameters(), *trainer.discriminator.parameters())]
    return weights, history.g_losses + history.d_losses


@pytest.mark.parametrize("config", [replace(SMALL, epochs=2), replace(SMALL, epochs=2, crop=24), replace(SMALL, epochs=2, **FULL_BATCH)])
def test_same_seed_same_weights_bit_for_bit(config):
    first, second = _train(5, config), _train(5, config)
    assert all(torch.equal(p, q) for p, q in zip(first[0], second[0]))
    assert first[1] == second[1]
    other = _train(6, config)
    assert not all(torch.equal(p, q) for p, q in zip(first[0], other[0]))
