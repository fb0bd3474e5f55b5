"""classify_images starting from a torchvision state dict (config.init_from = a .pt or
.safetensors file): the import matches torchvision, a new head stays fresh, train.freeze holds."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from experiments import classify_images  # noqa: E402
from test_classify_images import tiny  # noqa: E402
from train import optim  # noqa: E402


def torchvision_resnet18(num_classes):
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=num_classes).eval()
    with torch.no_grad():   # non-trivial running statistics, so eval mode is really checked
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net


def config_for(path, **train):
    config = tiny("resnet-photos", steps=1, batch_size=8, **train)
    config.model.name = "resnet18"
    config.model.overrides = {}
    config.init_from = str(path)
    return config


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_imported_logits_equal_torchvision(tmp_path, suffix):
    net = torchvision_resnet18(10)
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".pt":
        torch.save(net.state_dict(), path)
    else:
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    config = config_for(path)
    built = classify_images.build(config, num_classes=10, channels=3)
    variables = classify_images.import_torchvision(config, built)(path)
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    ours = built.model.apply(variables, x, train=False)
    with torch.no_grad():
        theirs = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4, rtol=1e-4)


def test_new_head_is_fresh_and_the_rest_loaded(tmp_path):
    net = torchvision_resnet18(1000)
    path = tmp_path / "resnet18.pt"
    torch.save(net.state_dict(), path)
    config = config_for(path)
    built = classify_images.build(config, num_classes=7, channels=3)
    loaded = optim.flat(classify_images.import_torchvision(config, built)(path))
    fresh = optim.flat(built.init_fn(__import__("jax").random.key(config.seed)))
    assert set(loaded) == set(fresh)
    head = {k for k in loaded if k.startswith("params/fc/")}
    assert head == {"params/fc/kernel", "params/fc/bias"}
    for k in head:
        np.testing.assert_array_equal(loaded[k], fresh[k])
    sd = net.state_dict()
    np.testing.assert_array_equal(loaded["params/conv1/kernel"],
                                  sd["conv1.weight"].numpy().transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(loaded["batch_stats/bn1/var"], sd["bn1.running_var"].numpy())
    assert not any(np.array_equal(loaded[k], fresh[k]) for k in set(loaded) - head
                   if k.startswith("params/") and k.endswith("kernel"))


def test_freeze_all_but_head_keeps_features(tmp_path):
    net = torchvision_resnet18(1000)
    path = tmp_path / "resnet18.pt"
    torch.save(net.state_dict(), path)
    config = config_for(path, freeze="(?!fc/).*")
    setup = classify_images.setup(config, tmp_path / "run")
    loaded = optim.flat(setup["import_weights"](path)["params"])
    state = classify_images.fit(config, workdir=tmp_path / "run", **setup)
    after = optim.flat(state.params)
    for k, v in loaded.items():
        if not k.startswith("fc/"):
            np.testing.assert_array_equal(np.asarray(after[k]), v, err_msg=k)
    assert not np.array_equal(np.asarray(after["fc/kernel"]), loaded["fc/kernel"])


def test_other_architecture_is_one_line_naming_the_model(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "resnet34.pt"
    torch.save(torchvision.models.resnet34(num_classes=10).state_dict(), path)
    config = config_for(path)
    built = classify_images.build(config, num_classes=10, channels=3)
    with pytest.raises(ValueError, match=r"resnet18.*unexpected: \['layer1\.2") as e:
        classify_images.import_torchvision(config, built)(path)
    assert "\n" not in str(e.value)
