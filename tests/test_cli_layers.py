from repfusion.cli import main


def test_layers_lists_teacher_modules_with_shapes(capsys):
    assert main(["layers", "--teacher", "tiny-16"]) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("mid_block.resnets.1.conv2 "))
    assert line.split()[-1] == "1x64x8x8"
    assert "mid block output: mid_block.resnets.1 (the same tensor as mid_block); mid_block.resnets.1.conv2 is " \
           "the residual branch before the skip connection is added" in out  # issue 19, item 17


def test_layers_lists_student_modules(capsys):
    assert main(["layers", "--student", "resnet18_cifar", "--width", "0.25"]) == 0
    out = capsys.readouterr().out
    assert any(l.startswith("layer4 ") and l.split()[-1] == "2x128x4x4" for l in out.splitlines())


def test_unknown_teacher_and_verb_exit_non_zero(capsys):
    assert main(["layers", "--teacher", "tiny16"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tiny-16" in err
    assert main(["distil"]) == 2
    assert "did you mean distill" in capsys.readouterr().err
