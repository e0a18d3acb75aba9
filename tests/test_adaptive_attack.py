"""The adaptive attack (the paper's Section 5.4): fine-tuning through the attacker's own REFINE lowers that REFINE's
loss while the backdoor stays; its model lives apart from the normal attack's, and the defender finds it."""
import json

import torch

from core.adaptive_attack import adaptive_finetune, attacker_seed
from core.defenses.remap import random_derangement
from core.metrics import ba_asr
from core.seeding import generator
from core.settings import flatten
from conftest import attack, one_line_refusal, run_main, runs


def test_fine_tuning_lowers_the_attackers_refine_loss_and_keeps_the_backdoor(toy_backdoor):
    model, attack_, train = toy_backdoor.model, toy_backdoor.attack, toy_backdoor.train
    poisoned_train, _ = attack_.poison_train(train)
    before = ba_asr(model, toy_backdoor.test, toy_backdoor.poisoned_test)
    seen = []
    # lr 0.003: in 26 steps at 0.01 the weights move faster than BatchNorm's running statistics follow (momentum
    # 0.1), so the toy model's BA/ASR fall with stale statistics in either --adaptive-bn mode (recomputing them
    # gives 100 / 100 back); at 0.003 the default 'eval' ends at BA 100, ASR 96
    adaptive_finetune(model, poisoned_train, gamma=1.0, epochs=2, lr=0.003, unet_channels=4, batch_size=32,
                      momentum=0.9, weight_decay=0.0, augment="flip", device="cpu", amp=False, seed=0,
                      on_epoch_end=lambda epoch, means: seen.append(means), log=lambda m: None)
    assert len(seen) == 2 and {"L_b", "L_refine", "agree"} <= set(seen[0])
    assert seen[-1]["L_refine"] < 0.8 * seen[0]["L_refine"], seen  # the simulated REFINE is pleased
    after = ba_asr(model.eval(), toy_backdoor.test, toy_backdoor.poisoned_test)
    assert before["ASR"] > 90 and after["ASR"] > 90, (before, after)  # and the backdoor is kept
    assert any(p.grad is not None for p in model.parameters())  # F itself was trained, not only T_a


def test_eval_bn_runs_the_simulated_refine_pass_in_evaluation_mode_and_joint_in_training_mode(toy_backdoors):
    """Every BatchNorm call of one fine-tuning epoch, by mode: 'joint' trains F on x and on T_a(x) (its running
    statistics gather both), 'eval' runs the T_a(x) pass as the defender's REFINE runs F, and puts F back."""
    seen = {}
    for bn in ("joint", "eval"):
        toy = toy_backdoors()
        model, train = toy.model.train(), toy.attack.poison_train(toy.train)[0].subset(torch.arange(64))
        first = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
        calls = []
        first.register_forward_pre_hook(lambda module, args: calls.append(module.training))
        adaptive_finetune(model, train, gamma=1.0, epochs=1, lr=0.01, unet_channels=4, batch_size=32, momentum=0.9,
                          weight_decay=0.0, augment="flip", device="cpu", amp=False, seed=0, bn=bn,
                          log=lambda m: None)
        seen[bn] = calls
        assert all(m.training for m in model.modules()), bn  # the modes F had are restored
    assert seen["joint"] == [True, True] * 2  # two steps of 32: F(x), then F(T_a(x)), both in training mode
    assert seen["eval"] == [True, False] * 2  # F(x) trains; F(T_a(x)) uses the running statistics


def test_the_attackers_derangement_is_not_the_defenders():
    for seed in range(5):
        defender = random_derangement(10, generator(seed, "label-mapping"))
        attacker = random_derangement(10, generator(attacker_seed(seed), "label-mapping"))
        assert not torch.equal(defender, attacker), seed


def test_adaptive_run_trains_the_normal_attack_first_and_lives_in_its_own_folder(data, tmp_path, capsys):
    out = tmp_path / "attack"
    argv = attack(data, out, "--attack", "BadNets", "--adaptive-gamma", "1.0", "--adaptive-epochs", "1",
                  "--adaptive-unet-channels", "4")
    code, _, err = run_main("attack", argv, capsys)
    assert code == 0, err
    root = out / "CIFAR10" / "ResNet18"
    [normal], [adaptive] = runs(root / "BadNets"), runs(root / "BadNets-adaptive")
    normal_settings = json.loads((normal / "run.json").read_text())["settings"]
    assert not any(k.startswith("adaptive") for k in flatten(normal_settings))  # normal runs keep their identity
    settings = json.loads((adaptive / "run.json").read_text())["settings"]
    assert settings["adaptive_gamma"] == 1.0 and "adaptive-attack" in settings["method_version"]
    metrics = json.loads((adaptive / "metrics.json").read_text())
    assert metrics["adaptive"]["normal_model"] == str(normal / "model.pth")
    assert [e["epoch"] for e in metrics["adaptive_losses"]] == [1] and "L_refine" in metrics["adaptive_losses"][0]
    assert (root / "BadNets" / "latest").resolve() == normal.resolve()  # the normal attack's latest stays normal
    # the same command again: both runs are finished and reused, nothing is trained
    code, stdout, _ = run_main("attack", argv, capsys)
    assert code == 0 and stdout.count("already finished") == 1
    # the defender finds the adaptive model under its own name
    code, _, err = run_main("refine", ["--data-root", str(data), "--attack-dir", str(out), "--out",
                                       str(tmp_path / "refine_res"), "--attack", "BadNets-adaptive", "--preset",
                                       "mini", "--unet-channels", "4", "--epochs", "1", "--compile", "false",
                                       "--test-size", "20", "--device", "cpu"], capsys)
    assert code == 0, err
    [defended] = runs(tmp_path / "refine_res" / "CIFAR10" / "ResNet18" / "BadNets-adaptive")
    assert str(adaptive / "model.pth") in (defended / "log.txt").read_text()


def test_an_adaptive_setting_without_gamma_is_refused_in_one_line(data, tmp_path, capsys):
    line = one_line_refusal("attack", attack(data, tmp_path / "attack", "--adaptive-epochs", "3"), capsys,
                            tmp_path / "attack")
    assert "--adaptive-epochs" in line and "--adaptive-gamma" in line
