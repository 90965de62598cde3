"""FreeEdit's model (``refcoco_edit.benchmark.freeedit.model``): DRRA at scale 0 is the plain U-Net
bit for bit, the reference reaches the output through DRRA once it is trained, save/load round trip,
the SD 4-channel widening, dual-CFG ``edit`` (denoises, deterministic per seed), module groups,
condition dropout and the loss per prediction type. Tiny random models saved in code and loaded
through ``FreeEdit.from_pretrained``; CPU, no network."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from support.tiny_freeedit import save_tiny_freeedit_base  # noqa: E402
from support.torch_env import one_torch_thread  # noqa: E402,F401 - an autouse fixture

from refcoco_edit.benchmark.freeedit.model import (  # noqa: E402
    MODULE_GROUPS, FreeEdit, FreeEditConfig, widen_conv_in)

B = 2


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_tiny_freeedit_base(tmp_path_factory.mktemp("freeedit-base"), sd=True)


def _load(base, **cfg) -> FreeEdit:
    torch.manual_seed(0)
    return FreeEdit.from_pretrained(base["ip2p"], config=FreeEditConfig(**cfg) if cfg else None,
                                    image_encoder=str(base["image_encoder"])).eval()


def _pixels(seed: int, size: int = 32, n: int = B) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def _unet_inputs(model: FreeEdit, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 8, 16, 16, generator=g)
    t = torch.tensor([10, 500])
    cond = model.instruction(model.tokenize(["make it red", "put the dog on it"])["input_ids"], _pixels(5))
    return x, t, cond


def test_drra_at_zero_scale_is_the_plain_unet_bit_for_bit(base):
    from diffusers import UNet2DConditionModel

    model = _load(base)
    plain = UNet2DConditionModel.from_pretrained(str(base["ip2p"]), subfolder="unet", local_files_only=True).eval()
    with torch.no_grad():
        x, t, cond = _unet_inputs(model)
        feats = model.detail_features(model.encode_image(_pixels(7)), model.null_instruction(B))
        assert sorted(feats) == sorted(model.layers) and len(feats) == 6
        ours = model.denoise(x, t, cond, feats)
        ref = plain(x, t, encoder_hidden_states=cond).sample
        assert torch.equal(ours, ref)
        for layer in model.drra.values():
            layer.scale.fill_(0.5)
        # the DRRA term is really computed: a non-zero scale moves the output
        assert not torch.allclose(model.denoise(x, t, cond, feats), ref, atol=1e-4)
        # and a sample whose instruction is dropped (keep = 0) gets the plain U-Net again
        keep0 = model.denoise(x, t, cond, feats, keep=torch.tensor([False, True]))
        assert torch.equal(keep0[0], ref[0]) and not torch.allclose(keep0[1], ref[1], atol=1e-4)


def test_training_drra_makes_the_reference_change_the_output(base):
    model = _load(base)
    model.requires_grad_(False)
    for p in model.module_groups()["drra"] + model.module_groups()["detail_extractor"]:
        p.requires_grad_(True)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    src, tgt, ref = _pixels(1), _pixels(2), _pixels(3)
    tok = model.tokenize(["make it red", "put the dog on it"])
    model.train()
    grads = {}
    for step in range(3):
        out = model(src, tgt, ref, tok["input_ids"], tok["attention_mask"], generator=torch.Generator().manual_seed(step))
        loss = model.loss(out)["loss"]
        opt.zero_grad()
        loss.backward()
        grads[step] = {k: float(torch.stack([p.grad.abs().sum() for p in v if p.grad is not None]).sum())
                       for k, v in model.module_groups().items() if k in ("drra", "detail_extractor")}
        opt.step()
    assert grads[0]["drra"] > 0  # the zero scales get a gradient at once ...
    assert grads[2]["detail_extractor"] > 0  # ... and once they move, so does the extractor
    assert all(float(layer.scale.detach()) != 0.0 for layer in model.drra.values())
    model.eval()
    with torch.no_grad():
        x, t, cond = _unet_inputs(model)  # same instruction tokens: only DRRA's features differ
        null = model.null_instruction(B)
        fa = model.detail_features(model.encode_image(_pixels(11)), null)
        fb = model.detail_features(model.encode_image(_pixels(12)), null)
        assert not torch.allclose(model.denoise(x, t, cond, fa), model.denoise(x, t, cond, fb), atol=1e-5)
        src = _pixels(4)
        ea = model.edit(src, _pixels(11), ["a", "b"], num_inference_steps=2, generator=torch.Generator().manual_seed(0))
        eb = model.edit(src, _pixels(12), ["a", "b"], num_inference_steps=2, generator=torch.Generator().manual_seed(0))
        assert (ea["images"] - eb["images"]).abs().max() > 1e-4


def test_save_and_load_round_trip_is_exact(base, tmp_path):
    model = _load(base, drra_scale_init=0.3, num_image_tokens=4)
    with torch.no_grad():  # every trained part differs from its initial value
        for p in list(model.projection.parameters()) + list(model.detail_extractor.parameters())[:4]:
            p.add_(0.01 * torch.randn_like(p))
    back = FreeEdit.from_pretrained(model.save_pretrained(tmp_path / "fe")).eval()
    assert back.config == model.config
    assert back.config.image_encoder == str(base["image_encoder"])
    sa, sb = model.state_dict(), back.state_dict()
    assert sorted(sa) == sorted(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    args = (_pixels(4), _pixels(5), ["make it red", "a cat"])
    kw = dict(num_inference_steps=2, generator=torch.Generator().manual_seed(3))
    a = model.edit(*args, **kw)["images"]
    kw["generator"] = torch.Generator().manual_seed(3)
    assert torch.equal(a, back.edit(*args, **kw)["images"])


def test_sd_unet_is_widened_with_zero_weights(base):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    model = FreeEdit.from_pretrained(base["sd"], image_encoder=str(base["image_encoder"])).eval()
    sd_unet = UNet2DConditionModel.from_pretrained(str(base["sd"]), subfolder="unet", local_files_only=True).eval()
    w = model.unet.conv_in.weight
    assert model.unet.config.in_channels == 8 and w.shape[1] == 8
    assert torch.equal(w[:, 4:], torch.zeros_like(w[:, 4:])) and torch.equal(w[:, :4], sd_unet.conv_in.weight)
    assert model.detail_extractor.config.in_channels == 8
    with torch.no_grad():
        x, t, cond = _unet_inputs(model)
        feats = model.detail_features(model.encode_image(_pixels(7)), model.null_instruction(B))
        ours = model.denoise(x, t, cond, feats)
        torch.testing.assert_close(ours, sd_unet(x[:, :4], t, encoder_hidden_states=cond).sample, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="narrow"):
        widen_conv_in(model.unet, 4)


def test_edit_denoises_with_three_branch_guidance_and_is_deterministic(base):
    model = _load(base)
    calls = []
    hook = model.unet.register_forward_hook(lambda m, a, k, o: calls.append((a[0].shape[0], float(a[1]))), with_kwargs=True)
    src, ref = _pixels(4), _pixels(5)

    def run(seed, **kw):
        return model.edit(src, ref, ["make it red", "a cat"], num_inference_steps=3,
                          generator=torch.Generator().manual_seed(seed), **kw)["images"]

    a = run(0)
    hook.remove()
    assert [c[0] for c in calls] == [3 * B] * 3  # (instruction, image), (image), (nothing) per step
    ts = [c[1] for c in calls]
    assert ts == sorted(ts, reverse=True) and len(set(ts)) == 3  # from noisy to clean
    assert a.shape == (B, 3, 32, 32) and float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(a, run(0))
    assert not torch.equal(a, run(1))
    assert not torch.allclose(a, run(0, guidance_scale=1.0), atol=1e-4)
    assert not torch.allclose(a, run(0, image_guidance_scale=1.0), atol=1e-4)
    with pytest.raises(ValueError, match="reference"):
        model.edit(src, ref[:1], ["a", "b"], num_inference_steps=1)
    with pytest.raises(ValueError, match="multiple"):
        model.edit(_pixels(4, size=31), ref, ["a", "b"], num_inference_steps=1)


def test_module_groups_partition_every_parameter_but_the_vae(base):
    model = _load(base)
    groups = model.module_groups()
    assert tuple(groups) == MODULE_GROUPS
    seen = {}
    for name, params in groups.items():
        assert params, name
        for p in params:
            assert id(p) not in seen, f"{name} shares a parameter with {seen.get(id(p))}"
            seen[id(p)] = name
    vae = {id(p) for p in model.vae.parameters()}
    assert set(seen) | vae == {id(p) for p in model.parameters()} and not (set(seen) & vae)
    # DRRA is not part of the U-Net's own weights (nor of what unet.save_pretrained writes)
    assert not any(k.startswith("drra") or "scale" in k for k in model.unet.state_dict())
    trainable = {id(p) for p in model.trainable_parameters()}
    assert trainable == {id(p) for k in ("projection", "unet", "detail_extractor", "drra") for p in groups[k]}


def test_forward_draws_from_the_generator_only_and_drops_conditions_as_documented(base):
    p = 1.0 / 3.0
    model = _load(base, conditioning_dropout_prob=p).train()
    n = 6
    src, tgt, ref = _pixels(1, n=n), _pixels(2, n=n), _pixels(3, n=n)
    tok = model.tokenize(["make it red"] * n)

    def fwd(seed):
        return model(src, tgt, ref, tok["input_ids"], tok["attention_mask"], generator=torch.Generator().manual_seed(seed))

    with torch.no_grad():
        a = fwd(4)
        torch.manual_seed(123)  # the global RNG plays no part
        b = fwd(4)
    assert torch.equal(a.noise_pred, b.noise_pred) and torch.equal(a.timesteps, b.timesteps)
    g = torch.Generator().manual_seed(4)  # the draws, in their documented order
    noise = torch.randn(a.target_latents.shape, generator=g)
    t = torch.randint(0, model.scheduler.config.num_train_timesteps, (n,), generator=g)
    u = torch.rand(n, generator=g)
    assert torch.equal(noise, a.noise) and torch.equal(t, a.timesteps)
    assert torch.equal(a.instruction_dropped, u < 2 * p) and torch.equal(a.image_dropped, (u >= p) & (u < 3 * p))
    with torch.no_grad():
        model.eval()
        c = fwd(4)
    assert not c.instruction_dropped.any() and not c.image_dropped.any()


def test_loss_follows_the_prediction_type(base):
    from diffusers import DDIMScheduler

    model = _load(base)
    src, tgt, ref = _pixels(1), _pixels(2), _pixels(3)
    tok = model.tokenize(["a", "b"])
    with torch.no_grad():
        out = model(src, tgt, ref, tok["input_ids"], tok["attention_mask"], generator=torch.Generator().manual_seed(0))
        terms = model.loss(out)
        assert set(terms) == {"loss", "eps"}
        torch.testing.assert_close(terms["loss"], ((out.noise_pred - out.noise) ** 2).mean())
        model.scheduler = DDIMScheduler.from_config(model.scheduler.config, prediction_type="v_prediction")
        v = model.scheduler.get_velocity(out.target_latents, out.noise, out.timesteps)
        torch.testing.assert_close(model.loss(out)["loss"], ((out.noise_pred - v) ** 2).mean())


def test_config_errors_are_precise():
    with pytest.raises(ValueError, match="unknown FreeEditConfig keys"):
        FreeEditConfig.from_dict({"drra_scale": 1.0})
    with pytest.raises(ValueError, match="square"):
        FreeEditConfig(num_image_tokens=5)
    with pytest.raises(ValueError, match=r"\[0, 1/3\]"):
        FreeEditConfig(conditioning_dropout_prob=0.5)
    assert FreeEditConfig.from_dict({"num_image_tokens": 0}).num_image_tokens == 0


def test_gradient_checkpointing_gives_the_same_gradients(base):
    """DRRA's inputs travel as call arguments, so the recomputed forward is the same forward."""
    src, tgt, ref = _pixels(1), _pixels(2), _pixels(3)

    def grads(checkpointing):
        model = _load(base, drra_scale_init=0.3).train()
        if checkpointing:
            model.enable_gradient_checkpointing()
        tok = model.tokenize(["make it red", "a cat"])
        out = model(src, tgt, ref, tok["input_ids"], tok["attention_mask"], generator=torch.Generator().manual_seed(0))
        model.loss(out)["loss"].backward()
        return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    a, b = grads(False), grads(True)
    assert sorted(a) == sorted(b) and any(k.startswith("detail_extractor.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
