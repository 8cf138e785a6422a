import json

import pytest
import torch

from repfusion.cli import main
from repfusion.data import DataConfig, ImageDataModule
from repfusion.distill.run import DistillRun, StudentSection, TeacherSection, build_distillation
from repfusion.errors import RepFusionError
from repfusion.training import TrainerConfig, build_trainer

FAST = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "2",
        "--trainer.progress", "false", "--student.width", "0.125"]


def tiny_run(**overrides) -> DistillRun:
    cfg = DistillRun(teacher=TeacherSection(source="tiny-16"), student=StudentSection(width=0.125),
                     data=DataConfig(batch_size=16), trainer=TrainerConfig(max_epochs=1, progress=False))
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def test_teacher_never_changes_and_never_gets_gradients(tmp_path):
    cfg = tiny_run()
    module = build_distillation(cfg, ImageDataModule(cfg.data))
    before = {k: v.clone() for k, v in module.teacher.unet.state_dict().items()}
    trainer = build_trainer(TrainerConfig(max_steps=3, progress=False, limit_val_batches=0, ema_decay=None), tmp_path)
    trainer.fit(module, datamodule=ImageDataModule(cfg.data))
    after = module.teacher.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None and not p.requires_grad for p in module.teacher.parameters())
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in module.teacher.parameters()}
    assert {id(p) for p in module.timesteps.parameters()} <= optimised
    assert {id(p) for p in module.reward_head.parameters()} <= optimised
    assert not module.teacher.training


def test_distill_cli_end_to_end(tmp_path):
    run_dir = tmp_path / "run"
    assert main(["distill", "--config", "configs/digits-resnet18-hint-policy.yaml", "--run-dir", str(run_dir), *FAST]) == 0
    for name in ("config.yaml", "metrics.csv", "timesteps.png", "timesteps.json", "checkpoints/last.ckpt",
                 "student/config.json", "student/diffusion_pytorch_model.safetensors", "student/distillation.json"):
        assert (run_dir / name).exists(), name
    header = (run_dir / "metrics.csv").read_text().splitlines()[0]
    for column in ("train/distill", "train/head_acc", "train/entropy", "train/t_mean", "train/reinforce"):
        assert column in header
    history = json.loads((run_dir / "timesteps.json").read_text())["history"]
    assert len(history) == 1 and sum(history[0]) == pytest.approx(1.0)
    ckpt = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)
    assert not any(k.startswith("teacher.") for k in ckpt["state_dict"])


@pytest.mark.parametrize("loss,strategy", [("at", "uniform"), ("rkd", "fixed"), ("cosine", "decay"),
                                           ("l1", "reinforced")])
def test_every_loss_and_strategy_trains(tmp_path, loss, strategy):
    argv = ["distill", "--run-dir", str(tmp_path), "--loss.name", loss, "--timesteps.strategy", strategy,
            "--data.batch_size", "16", *FAST]
    assert main(argv) == 0


def test_label_free_reward_and_noised_teacher(tmp_path):
    argv = ["distill", "--run-dir", str(tmp_path), "--reward", "infonce", "--teacher.noise_mode", "noised",
            "--data.batch_size", "16", *FAST]
    assert main(argv) == 0


def test_dense_hint_on_mobilenet(tmp_path):
    argv = ["distill", "--run-dir", str(tmp_path), "--student.arch", "mobilenetv2_cifar", "--loss.name", "hint",
            "--loss.options", "{mode: dense}", "--data.batch_size", "16", *FAST]
    assert main(argv) == 0


def test_bad_layer_names_fail_at_start_up(capsys, tmp_path):
    assert main(["distill", "--run-dir", str(tmp_path), "--teacher.layer", "mid_block.resnet.1.conv2", *FAST]) == 1
    assert "mid_block.resnets.1.conv2" in capsys.readouterr().err
    assert main(["distill", "--run-dir", str(tmp_path), "--student.layer", "layer5", *FAST]) == 1
    assert "layer4" in capsys.readouterr().err


def test_teacher_size_mismatch_is_an_error():
    cfg = tiny_run(data=DataConfig(image_size=32))
    with pytest.raises(RepFusionError, match="trained on 16x16"):
        build_distillation(cfg, ImageDataModule(cfg.data))


def test_config_errors_are_one_sentence(capsys, tmp_path):
    assert main(["distill", "--run-dir", str(tmp_path), "--loss.nme", "at"]) == 1
    err = capsys.readouterr().err
    assert "loss.name" in err and err.count("\n") == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("timesteps:\n  strategy: reinforced\n  entropy: 0.1\n")
    assert main(["distill", "--config", str(bad)]) == 1
    assert "timesteps.entropy" in capsys.readouterr().err
    assert main(["distill", "--config", str(tmp_path / "missing.yaml")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_several_teacher_layers_fuse_into_one_pooled_target_and_dense_losses_refuse_them(tmp_path):
    from repfusion.distill.run import LossSection

    layers = ["down_blocks.1", "mid_block", "up_blocks.0"]
    cfg = tiny_run(teacher=TeacherSection(source="tiny-16", layer=layers))
    module = build_distillation(cfg, ImageDataModule(cfg.data))
    images = torch.rand(4, 3, 16, 16)
    target = module.teacher_features(images, torch.zeros(4, dtype=torch.long))
    maps = module.teacher(images, torch.zeros(4, dtype=torch.long), tuple(layers))
    assert target.shape == (4, sum(maps[layer].shape[1] for layer in layers))
    module.eval()  # the standardiser's statistics are per channel of the fused vector
    assert module.target_norm.mean.shape[1] == target.shape[1]
    dense = tiny_run(teacher=TeacherSection(source="tiny-16", layer=layers),
                     loss=LossSection(name="hint", options={"mode": "dense"}))
    with pytest.raises(RepFusionError, match="make one pooled target"):
        build_distillation(dense, ImageDataModule(dense.data))


def test_the_reward_head_also_trains_on_a_uniform_t_not_only_the_policys():
    """Trained only where the policy samples, the head would score those bins best and feed the policy's choice
    back to it; with head_uniform_t (our default) every step also shows it one uniformly drawn t per image."""
    from repfusion.distill.timesteps import TimestepConfig

    for uniform in (True, False):
        cfg = tiny_run(timesteps=TimestepConfig(head_uniform_t=uniform), reward="label")
        module = build_distillation(cfg, ImageDataModule(cfg.data))
        seen: list[torch.Tensor] = []
        original = module.teacher_features
        module.teacher_features = lambda images, t, labels=None: seen.append(t.clone()) or original(images, t, labels)
        module.timesteps.sample = lambda x, epoch: __import__("repfusion.distill.timesteps", fromlist=["x"]).TimestepDraw(
            torch.zeros(len(x), dtype=torch.long), torch.zeros(len(x), requires_grad=True), torch.ones(len(x)),
            None)
        module.epoch_progress = lambda batch_idx: 0.0
        module.log_dict = module.log = lambda *a, **k: None
        module.training_step((torch.rand(64, 3, 16, 16), torch.randint(0, 10, (64,))), 0)
        assert len(seen) == (2 if uniform else 1)
        if uniform:
            assert seen[1].float().std() > 100  # spread over [0, T), while the policy drew t = 0 only


def test_distillation_receives_a_handful_of_built_parts_under_the_names_checkpoints_use():
    """At most 6 parameters besides self (teacher tap, student tap, objective, timestep policy, augmentation,
    optimiser settings); their modules keep the names and the order every saved checkpoint (and the optimiser's
    parameter order on resume) was written with."""
    import inspect

    from repfusion.distill.module import Distillation

    parameters = [name for name in inspect.signature(Distillation.__init__).parameters if name != "self"]
    assert len(parameters) <= 6, parameters
    cfg = tiny_run()
    module = build_distillation(cfg, ImageDataModule(cfg.data))
    assert [name for name, _ in module.named_children()] == [
        "augment", "teacher", "student", "distill_loss", "timesteps", "reward_head", "normalize", "target_norm"]
    assert module.teacher_layers == (cfg.teacher.layer,) and module.student_layer == module.student.feature_layer
    assert (module.noise_mode, module.kd_weight) == ("clean", cfg.loss.kd_weight)
    assert (module.crop_padding, module.flip) == (cfg.data.crop_padding, cfg.data.flip)
