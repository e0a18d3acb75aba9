"""REFINE-BB (the paper's Appendix E): the suspect model reached only through its probabilities, a surrogate
distilled from them, REFINE trained through the surrogate and deployed around the black box."""
import pytest
import torch
import torch.nn as nn

from core.defenses import BlackBoxModel, BlackBoxRefine, FitContext
from core.metrics import ba_asr


def test_a_black_box_answers_probabilities_and_nothing_else(toy_backdoor):
    box = BlackBoxModel(toy_backdoor.model, "cpu")
    x = torch.rand(5, 3, 16, 16, requires_grad=True)
    probs = box.probabilities(x)
    assert probs.shape == (5, 4) and torch.allclose(probs.sum(1), torch.ones(5))
    assert not probs.requires_grad and probs.grad_fn is None  # no gradient reaches the model or the input
    with torch.no_grad():
        assert torch.allclose(probs, toy_backdoor.model(x).softmax(1), atol=1e-6)
    for name in ("parameters", "state_dict", "forward", "model", "named_modules"):
        with pytest.raises(AttributeError, match="probabilities"):
            getattr(box, name)
    with pytest.raises(TypeError, match="not a module"):
        box(x)
    assert not any(isinstance(getattr(box, slot), nn.Module) for slot in BlackBoxModel.__slots__)


class _Calls(list):
    def __deepcopy__(self, memo):  # the defense works on copies of the model: they must report to the same list
        return self


class _Watched(nn.Module):
    """The suspect model with a record of every call: was a gradient being recorded?"""

    def __init__(self, model):
        super().__init__()
        self.model, self.spec, self.calls = model, model.spec, _Calls()

    def forward(self, x):
        self.calls.append(torch.is_grad_enabled())
        return self.model(x)


def test_refine_bb_reaches_the_model_without_gradients_or_weights_and_deploys_t_and_m_around_it(toy_backdoor):
    model, train, test, poisoned = (toy_backdoor.model, toy_backdoor.train, toy_backdoor.test,
                                    toy_backdoor.poisoned_test)
    watched = _Watched(model)
    watched.requires_grad_(True)  # were a gradient taken through it, the weights would show it
    defense = BlackBoxRefine(surrogate_width=8, surrogate_epochs=2, surrogate_lr=5e-3, surrogate_batch_size=32,
                             surrogate_augment="flip", unet_channels=4, loss="ce", unet_input="pixels", epochs=1,
                             batch_size=32, lr=5e-3, optimizer="Adam", weight_decay=0.0, schedule="onecycle",
                             augment="flip", supcon_views=1)
    ctx = FitContext(device="cpu", seed=0, measure=lambda m: ba_asr(m, test, poisoned))
    deployed = defense.fit(watched, train, ctx)
    assert watched.calls and not any(watched.calls)  # every query of the model ran without recording a gradient
    assert all(p.grad is None for p in model.parameters())
    # the surrogate learned the black box's benign behaviour from its probabilities on clean images alone (like the
    # paper's surrogates, it need not learn the backdoor: the defender's images carry no trigger)
    surrogate = defense.report["surrogate"]
    assert surrogate["no_defense"]["BA"] > 60 and "REFINE" in surrogate, surrogate
    # deployed: M(F(T(x))) with F the suspect model itself, T and M as trained through the surrogate
    x = test.images[:8].float() / 255
    with torch.no_grad():
        expected = deployed.output_map(model(deployed.transform(x)))
        assert torch.allclose(deployed(x), expected, atol=1e-5)
