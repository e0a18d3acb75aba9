"""The one training loop (core.train.fit), the frozen-modules context and the resumable state by stage."""
import pytest
import torch
import torch.nn as nn

import core.train
from core.errors import DivergedError, UserError
from core.train import EpochState, RandomStream, Stages, fit, frozen


class Stop(Exception):
    pass


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))


def _data(n=12):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, generator=g), torch.randn(n, generator=g)


def _mse(x, y, mods):
    return ((mods["net"](x).squeeze(1) - y) ** 2).mean(), {}


def test_frozen_sets_eval_and_no_grad_and_restores_both_even_on_an_exception():
    net, other = _net(), nn.BatchNorm1d(2)
    net.train()
    net[1].eval()  # a submodule with its own mode
    net[0].bias.requires_grad_(False)  # and a parameter with its own flag
    other.train()
    modes = [m.training for m in net.modules()] + [other.training]
    flags = [p.requires_grad for p in net.parameters()]
    with pytest.raises(Stop):
        with frozen(net, other):
            assert not any(m.training for m in net.modules()) and not other.training
            assert not any(p.requires_grad for p in net.parameters())
            raise Stop
    assert [m.training for m in net.modules()] + [other.training] == modes
    assert [p.requires_grad for p in net.parameters()] == flags


def test_fit_restores_every_mode_and_flag_when_the_loss_raises():
    net, reader = _net(), _net()
    net.eval()
    reader.train()
    reader[0].weight.requires_grad_(False)
    flags = [p.requires_grad for p in reader.parameters()]
    seen = []
    calls = []

    def loss_fn(x, y, mods):
        seen.append((mods["net"].training, reader.training, any(p.requires_grad for p in reader.parameters())))
        calls.append(1)
        if len(calls) == 3:
            raise Stop
        return ((mods["net"](x).squeeze(1) + reader(x).squeeze(1) - y) ** 2).mean(), {}

    x, y = _data()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(Stop):
        fit(loss_fn, {"net": net}, x, y, optimizer=opt, epochs=2, batch_size=4, device="cpu", trainable=("net",),
            frozen=(reader,), log=lambda m: None)
    assert set(seen) == {(True, False, False)}  # trained in training mode, the frozen module in eval without grads
    assert not net.training and all(not m.training for m in net.modules())  # as it came
    assert reader.training and all(m.training for m in reader.modules())
    assert [p.requires_grad for p in reader.parameters()] == flags
    # and when it returns
    fit(_mse, {"net": net}, x, y, optimizer=opt, epochs=1, batch_size=4, device="cpu", trainable=("net",),
        frozen=(reader,), log=lambda m: None)
    assert not net.training and reader.training and [p.requires_grad for p in reader.parameters()] == flags


def test_fit_runs_the_loss_under_its_autocast(monkeypatch):
    # fit owns mixed precision: loss functions no longer call autocast (bf16 on CUDA only; the CPU is unchanged)
    entered = []
    real = core.train.autocast

    def spy(device, enabled):
        entered.append((torch.device(device).type, enabled))
        return real(device, enabled)
    monkeypatch.setattr(core.train, "autocast", spy)
    net = _net()
    x, y = _data(8)
    for amp in (True, False):
        entered.clear()
        fit(_mse, {"net": net}, x, y, optimizer=torch.optim.SGD(net.parameters(), lr=0.1), epochs=1, batch_size=4,
            device="cpu", trainable=("net",), amp=amp, log=lambda m: None)
        assert entered == [("cpu", amp)] * 2  # one per step, around the loss


def _run(path, epochs=3, stop_at=None, hook_log=None):
    """A tiny fit with an EpochState, a stream drawn across epochs (RandomStream) and an end-of-epoch hook."""
    net = _net()
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    noise = torch.Generator().manual_seed(7)
    counter = {"steps": 0}

    def loss_fn(x, y, mods):
        counter["steps"] += 1
        if counter["steps"] == stop_at:
            raise Stop
        x = x + 0.1 * torch.randn(x.shape, generator=noise)
        return ((mods["net"](x).squeeze(1) - y) ** 2).mean(), {}

    state = EpochState(path, {"net": net, "noise": RandomStream(noise)}, opt, {"k": 1}) if path else None
    x, y = _data()
    means = fit(loss_fn, {"net": net}, x, y, optimizer=opt, epochs=epochs, batch_size=4, device="cpu",
                trainable=("net",), state=state, log=lambda m: None,
                on_epoch_end=(lambda e, m: hook_log.append((e, m["loss"]))) if hook_log is not None else None)
    return net, means, counter["steps"]


def test_a_loop_stopped_mid_epoch_resumes_to_the_same_weights_with_its_streams(tmp_path):
    whole, whole_means, _ = _run(None)
    with pytest.raises(Stop):
        _run(tmp_path / "s.pth", stop_at=5)  # epoch 2, step 2: epoch 1 is saved
    hooks = []
    resumed, means, steps = _run(tmp_path / "s.pth", hook_log=hooks)
    assert steps == 6 and [e for e, _ in hooks] == [2, 3]  # epochs 2 and 3 only
    assert means == whole_means
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    # a finished state: nothing runs, the last epoch's means come back
    again, means, steps = _run(tmp_path / "s.pth")
    assert steps == 0 and means == whole_means
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), again.state_dict().values()))


class _Counter:
    """A small state object (what NC keeps for its λ schedule)."""

    def __init__(self):
        self.value = 0

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = state["value"]


def _staged_run(folder, stop_in=None):
    """Three stages training one shared module (as BTI-DBF's generator over its rounds), each with a scratch
    optimizer of its own, a small counter and a one-shot stage between them."""
    net = _net()
    stages = Stages(folder, {"k": 1})
    x, y = _data()
    ran, counters = [], []
    for name in ("a", "b/c", "d"):
        opt = torch.optim.Adam(net.parameters(), lr=0.05)
        counter = _Counter()
        counters.append(counter)

        def loss_fn(x, y, mods, name=name, counter=counter):
            ran.append(name)
            counter.value += 1
            if name == stop_in and len([r for r in ran if r == name]) == 4:
                raise Stop
            return ((mods["net"](x).squeeze(1) - y) ** 2).mean(), {}

        fit(loss_fn, {"net": net}, x, y, optimizer=opt, epochs=2, batch_size=4, device="cpu", trainable=("net",),
            state=stages.state(name, {"net": net, "optimizer": opt, "counter": counter}, scratch=("optimizer",)),
            log=lambda m: None)
        if name == "a":
            once = stages.once("once", lambda: (len(ran), torch.arange(3)))
    return net, ran, [c.value for c in counters], once


def test_stages_resume_mid_stage_skip_finished_ones_and_keep_one_copy_of_shared_parts(tmp_path):
    whole, _, counts, once = _staged_run(None)
    assert counts == [6, 6, 6] and once[0] == 6
    with pytest.raises(Stop):
        _staged_run(tmp_path, stop_in="b/c")  # in stage b/c's second epoch
    resumed, ran, counts, once_again = _staged_run(tmp_path)
    assert ran == ["b/c"] * 3 + ["d"] * 6  # a is skipped, b/c continues with its second epoch
    assert counts == [6, 6, 6], "each stage's counter restored: a's as it finished, b/c's after its epoch 1"
    assert once_again[0] == once[0] and torch.equal(once_again[1], once[1])  # saved, not computed again
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    files = {p.relative_to(tmp_path).as_posix(): torch.load(p, weights_only=True) for p in tmp_path.rglob("*.pth")}
    assert set(files) == {"a.pth", "b/c.pth", "d.pth", "once.pth"}
    assert all(f["finished"] and "optimizer" not in f["modules"] for f in files.values())  # scratch dropped
    # the shared module is kept by the last stage that trained it only; the others keep what is theirs
    assert [n for n in files if "net" in files[n]["modules"]] == ["d.pth"]
    assert all("counter" in files[n]["modules"] for n in ("a.pth", "b/c.pth", "d.pth"))
    # run again: every stage is finished and the result is the same
    again, ran, _, _ = _staged_run(tmp_path)
    assert ran == []
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), again.state_dict().values()))
    with pytest.raises(UserError, match="other settings"):
        Stages(tmp_path, {"k": 2}).once("once", lambda: None)


def test_weights_gone_infinite_after_the_epochs_last_step_stop_the_run_before_it_is_saved(tmp_path):
    # one step per epoch from a finite loss (1e35) whose update (lr 1e6 × gradient 1e35) overflows float32
    net = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.ones_(net.weight)
    x, y = torch.ones(4, 1), torch.zeros(4)
    state = EpochState(tmp_path / "state.pth", {"net": net})
    with pytest.raises(DivergedError, match="weights became NaN or infinite in epoch 1: training diverged"):
        fit(lambda x, y, mods: (mods["net"](x).mean() * 1e35, {}), {"net": net}, x, y,
            optimizer=torch.optim.SGD(net.parameters(), lr=1e6), epochs=1, batch_size=4, device="cpu",
            trainable=("net",), state=state, log=lambda m: None)
    assert not (tmp_path / "state.pth").exists(), "a diverged epoch is not saved"
