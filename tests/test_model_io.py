import io
import os
import warnings
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from labelflip_models.attacks import Bounds
from labelflip_models.attacks.engine import fast_copy
from labelflip_models.errors import ConfigError
from labelflip_models.models.architectures import Normalized, build_model, cw_mnist, predict
from labelflip_models.models.cache import model_sha256
from labelflip_models.models.io import (
    ExportedModule,
    LogitsOutput,
    ModelWarning,
    check_model,
    load_model,
    logits_adapter,
    logits_of,
    model_format,
    parse_bounds,
    parse_channel_values,
    parse_class_names,
)
from labelflip_models.runs.evaluate import load_user_model

from .helpers import tiny_dataset

# TorchScript is deprecated upstream but still the portable format users have; its warnings are noise here.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")


class TinyNet(nn.Module):
    """Module-level, so that torch.save(whole module) can pickle it by reference."""

    def __init__(self, in_shape: tuple[int, int, int] = (1, 28, 28), outputs: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_shape[0], 2, 3, padding=1)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(2 * in_shape[1] * in_shape[2], outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(torch.relu(self.conv(x))).flatten(1))


class NaNNet(TinyNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return torch.where(torch.arange(len(out))[:, None] % 2 == 0, torch.nan, out)  # every other row


class ThreeDNet(TinyNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)[:, None, :]


@pytest.fixture(autouse=True)
def _own_rng():
    """The tests seed torch's global generator; keep that from leaking into other tests on this worker."""
    with torch.random.fork_rng(devices=[]):
        yield


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def _tiny(**kw) -> TinyNet:
    torch.manual_seed(0)
    return TinyNet(**kw).eval()


def _same_predictions(loaded: nn.Module, original: nn.Module, images: torch.Tensor) -> None:
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), original(images))
    assert torch.equal(predict(loaded, images), predict(original, images))
    assert not any(m.training for m in loaded.modules())


# --- formats ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("export", [torch.jit.script, lambda m: torch.jit.trace(m, torch.rand(1, 1, 28, 28))])
def test_torchscript_loads_without_arch_whatever_the_extension(tmp_path, images, export):
    model = _tiny()
    path = tmp_path / "model.weights"  # extension says nothing: detection is by content
    torch.jit.save(export(model), str(path))
    assert model_format(path) == "torchscript"
    loaded = load_model(path)
    assert isinstance(loaded, torch.jit.ScriptModule)  # no mean/std given: returned unwrapped
    _same_predictions(loaded, model, images)


def test_torchscript_gets_normalisation_when_mean_std_given(tmp_path, images):
    model = _tiny()
    torch.jit.save(torch.jit.script(model), str(tmp_path / "m.pt"))
    loaded = load_model(tmp_path / "m.pt", mean=(0.5,), std=(0.25,))
    assert isinstance(loaded, Normalized)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model((images - 0.5) / 0.25))


def test_torchscript_in_training_mode_is_switched_to_eval_with_a_warning(tmp_path, images):
    model = _tiny().train()
    torch.jit.save(torch.jit.script(model), str(tmp_path / "m.pt"))
    with pytest.warns(ModelWarning, match="training mode.*nondeterministic.*eval mode"):
        loaded = load_model(tmp_path / "m.pt")
    # Dropout is off now, so outputs are deterministic and equal the eval-mode original's.
    _same_predictions(loaded, model.eval(), images)


def test_arch_is_ignored_with_a_warning_for_whole_models(tmp_path):
    torch.jit.save(torch.jit.script(_tiny()), str(tmp_path / "m.pt"))
    with pytest.warns(ModelWarning, match="architecture 'cw-mnist' is ignored"):
        load_model(tmp_path / "m.pt", arch="cw-mnist")


def test_safetensors_state_dict_of_the_bare_network(tmp_path, images):
    torch.manual_seed(1)
    net = cw_mnist().eval()
    path = tmp_path / "w.bin"
    save_file(net.state_dict(), str(path))
    assert model_format(path) == "safetensors"
    loaded = load_model(path, arch="cw-mnist")
    # User weights default to no normalisation.
    assert loaded.mean.flatten().tolist() == [0.0] and loaded.std.flatten().tolist() == [1.0]
    _same_predictions(loaded, net, images)


def test_normalized_state_dict_brings_its_own_mean_and_std(tmp_path, images):
    torch.manual_seed(2)
    model = build_model("cw-mnist", mean=(0.1307,), std=(0.3081,)).eval()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    assert model_format(tmp_path / "w.pt") == "state_dict"
    loaded = load_model(tmp_path / "w.pt", arch="cw-mnist")
    torch.testing.assert_close(loaded.mean, model.mean)
    torch.testing.assert_close(loaded.std, model.std)
    _same_predictions(loaded, model, images)

    # Explicit mean/std win over the checkpoint's.
    override = load_model(tmp_path / "w.pt", arch="cw-mnist", mean=(0.0,), std=(1.0,))
    with torch.no_grad():
        torch.testing.assert_close(override(images), model.net(images))


def test_normalized_state_dict_in_safetensors(tmp_path, images):
    torch.manual_seed(3)
    model = build_model("cw-mnist", mean=(0.2,), std=(0.5,)).eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    _same_predictions(load_model(tmp_path / "w.safetensors", arch="cw-mnist"), model, images)


@pytest.mark.parametrize("wrapper", ["state_dict", "model_state_dict"])
def test_wrapped_checkpoint_dicts(tmp_path, images, wrapper):
    torch.manual_seed(4)
    net = cw_mnist().eval()
    torch.save({wrapper: net.state_dict(), "epoch": 7}, tmp_path / "ckpt.pt")
    _same_predictions(load_model(tmp_path / "ckpt.pt", arch="cw-mnist"), net, images)


def test_legacy_non_zip_torch_save(tmp_path, images):
    torch.manual_seed(5)
    net = cw_mnist().eval()
    torch.save(net.state_dict(), tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    assert (tmp_path / "old.pt").read_bytes()[:1] == b"\x80"
    _same_predictions(load_model(tmp_path / "old.pt", arch="cw-mnist"), net, images)


def test_three_channel_state_dict_with_per_channel_normalisation(tmp_path):
    torch.manual_seed(6)
    net = cw_mnist(in_channels=3).eval()
    torch.save(net.state_dict(), tmp_path / "w.pt")
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    loaded = load_model(tmp_path / "w.pt", arch="cw-mnist", in_channels=3, mean=mean, std=std)
    x = torch.rand(2, 3, 28, 28)
    expected = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(expected))


def test_pickled_whole_module_is_refused_without_trust(tmp_path):
    torch.save(_tiny(), tmp_path / "whole.pt")
    assert model_format(tmp_path / "whole.pt") == "pickle"
    with pytest.raises(ConfigError, match=r"(?s)executes arbitrary code.*`trust_pickle`.*torch\.jit\.save") as err:
        load_model(tmp_path / "whole.pt")
    assert "TinyNet" in str(err.value)  # says which class the file wants to run


def test_pickled_whole_module_loads_with_trust(tmp_path, images):
    model = _tiny().train()
    torch.save(model, tmp_path / "whole.pt")
    with pytest.warns(ModelWarning, match="training mode"):
        loaded = load_model(tmp_path / "whole.pt", trust_pickle=True)
    assert type(loaded) is TinyNet
    _same_predictions(loaded, model.eval(), images)


def test_trusted_pickle_whose_class_is_gone(tmp_path):
    # As when a model was saved from a script's __main__: its class cannot be imported here. The module name
    # is overwritten with one of the same length, so the pickle's length-prefixed strings stay valid.
    here = TinyNet.__module__.encode()
    gone = b"q" * len(here)
    torch.save(_tiny(), tmp_path / "whole.pt")
    with zipfile.ZipFile(tmp_path / "whole.pt") as src, zipfile.ZipFile(tmp_path / "gone.pt", "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("/data.pkl"):
                assert here in data
                data = data.replace(here, gone)
            dst.writestr(item, data)
    with pytest.raises(ConfigError, match=rf"cannot unpickle .*No module named '{gone.decode()}'.*torch\.jit\.save"):
        load_model(tmp_path / "gone.pt", trust_pickle=True)


# --- load errors ---------------------------------------------------------------------------------

def _bare_state_dict_file(tmp_path, **kw):
    torch.save(cw_mnist(**kw).state_dict(), tmp_path / "w.pt")
    return tmp_path / "w.pt"


def test_state_dict_needs_arch(tmp_path):
    with pytest.raises(ConfigError, match=r"state dict.*`arch`.*cw-mnist"):
        load_model(_bare_state_dict_file(tmp_path))


def test_unknown_arch(tmp_path):
    with pytest.raises(ConfigError, match="unknown architecture 'resnet9'"):
        load_model(_bare_state_dict_file(tmp_path), arch="resnet9")


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    state = cw_mnist().state_dict()
    del state["0.weight"]
    state["extra.bias"] = torch.zeros(3)
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(ConfigError, match=r"missing keys \(1\): 0\.weight; unexpected keys \(1\): extra\.bias"):
        load_model(tmp_path / "w.pt", arch="cw-mnist")


def test_shape_mismatch_is_listed(tmp_path):
    path = _bare_state_dict_file(tmp_path, num_classes=7)
    last = list(cw_mnist().state_dict())[-2]  # the final layer's weight
    with pytest.raises(ConfigError, match=rf"shape mismatches, file vs arch \(2\): {last} \(7, 200\) vs \(10, 200\)"):
        load_model(path, arch="cw-mnist")


def test_many_bad_keys_are_abbreviated(tmp_path):
    torch.save({f"layer{i}.weight": torch.zeros(1) for i in range(9)}, tmp_path / "w.pt")
    expected = list(cw_mnist().state_dict())
    with pytest.raises(ConfigError, match=rf"missing keys \({len(expected)}\): {', '.join(expected[:5])}, \.\.\.; "
                                          r"unexpected keys \(9\): layer0\.weight, .*layer4\.weight, \.\.\.") as err:
        load_model(tmp_path / "w.pt", arch="cw-mnist")
    assert "layer5" not in str(err.value) and expected[5] not in str(err.value)


@pytest.mark.parametrize("content, match", [
    (b"", "empty file"),
    (b"just some notes about my model\n", "not a model file"),
    (b"\x00" * 64, "not a model file"),
])
def test_unrecognised_files(tmp_path, content, match):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=rf"{match}; accepted formats: a torch.export archive \(torch.export.save, "
                                          r"\.pt2\), a TorchScript archive"):
        load_model(path)
    with pytest.raises(ConfigError, match=str(path)):
        model_format(path)


def test_truncated_zip(tmp_path):
    torch.save(cw_mnist().state_dict(), tmp_path / "w.pt")
    data = (tmp_path / "w.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError, match=r"cut\.pt is a damaged zip archive.*accepted formats"):
        load_model(tmp_path / "cut.pt", arch="cw-mnist")


def test_truncated_safetensors(tmp_path):
    save_file(cw_mnist().state_dict(), str(tmp_path / "w.safetensors"))
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 1000])
    with pytest.raises(ConfigError, match=r"cannot read safetensors file .*cut\.safetensors"):
        load_model(tmp_path / "cut.safetensors", arch="cw-mnist")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.pt does not exist"):
        load_model(tmp_path / "nope.pt")
    with pytest.raises(ConfigError, match=rf"{tmp_path} is a directory.*accepted formats"):
        load_model(tmp_path)


@pytest.mark.parametrize("payload, match", [
    (torch.zeros(3), "holds a Tensor, not a state dict"),
    ({"epoch": 3, "lr": 0.1}, r"not a state dict \(keys: 'epoch', 'lr'\)"),
    ({}, r"not a state dict \(keys: none\)"),
])
def test_torch_files_that_hold_no_state_dict(tmp_path, payload, match):
    torch.save(payload, tmp_path / "x.pt")
    with pytest.raises(ConfigError, match=match):
        load_model(tmp_path / "x.pt", arch="cw-mnist")


@pytest.mark.parametrize("kw, match", [
    ({"mean": (0.1, 0.2)}, r"`mean` needs 1 value \(the dataset's images have 1 channel\), got 2"),
    ({"std": (0.1, 0.2, 0.3, 0.4), "in_channels": 3}, r"`std` needs 1 value or 3 \(one per channel.*got 4"),
    ({"std": (0.0,)}, "`std` values must be positive"),
    ({"std": (1.0, -1.0, 1.0), "in_channels": 3}, "`std` values must be positive"),
])
def test_bad_normalisation(tmp_path, kw, match):
    path = _bare_state_dict_file(tmp_path, in_channels=kw.get("in_channels", 1))
    with pytest.raises(ConfigError, match=match):
        load_model(path, arch="cw-mnist", **kw)


# --- check_model -------------------------------------------------------------------------------

def test_check_model_accepts_a_fitting_model(images):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_model(build_model("cw-mnist").eval(), images, 10)


def test_check_model_wrong_input_shape(images):
    model = _tiny(in_shape=(3, 32, 32))
    with pytest.raises(ConfigError, match=r"model rejected input of shape \(6, 1, 28, 28\).*: "
                                          r"Given groups=1, weight of size"):
        check_model(model, images, 10)


def test_check_model_wrong_input_shape_torchscript_names_the_real_error(tmp_path, images):
    torch.jit.save(torch.jit.script(_tiny(in_shape=(1, 32, 32))), str(tmp_path / "m.pt"))
    model = load_model(tmp_path / "m.pt")
    with pytest.raises(ConfigError, match=r"rejected input of shape \(6, 1, 28, 28\).*: RuntimeError: mat1 and mat2"):
        check_model(model, images, 10)


def test_check_model_wrong_class_count(images):
    with pytest.raises(ConfigError, match=r"model outputs 7 classes, but the dataset has 10.*\(6, 7\).*\(6, 10\)"):
        check_model(_tiny(outputs=7), images, 10)


def test_check_model_non_finite_logits(images):
    torch.manual_seed(0)
    with pytest.raises(ConfigError, match=r"non-finite logits \(NaN/inf\) for 3 of 6 rows"):
        check_model(NaNNet().eval(), images, 10)


def test_check_model_three_d_output(images):
    torch.manual_seed(0)
    with pytest.raises(ConfigError, match=r"logits of shape \(6, 1, 10\), expected \(6, 10\)"):
        check_model(ThreeDNet().eval(), images, 10)


def test_check_model_non_tensor_output(images):
    class TupleNet(TinyNet):
        def forward(self, x):
            return (super().forward(x),)

    with pytest.raises(ConfigError, match="model returned tuple, expected a tensor"):
        check_model(TupleNet().eval(), images, 10)


def test_check_model_switches_training_mode_off(images):
    model = _tiny().train()
    with pytest.warns(ModelWarning, match="training mode"):
        check_model(model, images, 10)
    assert not any(m.training for m in model.modules())


def test_check_model_runs_without_grad(images):
    seen = []

    class Spy(TinyNet):
        def forward(self, x):
            seen.append(torch.is_grad_enabled())
            return super().forward(x)

    check_model(Spy().eval(), images, 10)
    assert seen == [False]


# --- torch.export archives (.pt2) ------------------------------------------------------------------

BATCH = torch.export.Dim.DYNAMIC
# Set by `_mark` when unpickled: proves whether loading a file ran code it names.
UNPICKLED = []


def _mark() -> torch.Tensor:
    UNPICKLED.append(True)
    return torch.zeros(2, 1, 28, 28)


class Marker:
    """Pickles as a call of `_mark`, as a malicious file would name os.system."""

    def __reduce__(self):
        return _mark, ()


def _export(model: nn.Module, path, shape=(2, 1, 28, 28), dynamic: bool = True):
    program = torch.export.export(model, (torch.rand(*shape),), dynamic_shapes=({0: BATCH},) if dynamic else None)
    torch.export.save(program, str(path))
    return path


def _rewrite(src, dst, change):
    """A copy of the zip archive `src` with each member's bytes passed through change(name, data) (None: dropped)."""
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(dst, "w") as b:
        for item in a.infolist():
            data = change(item.filename, a.read(item))
            if data is not None:
                b.writestr(item, data)
    return dst


@pytest.fixture
def exported(tmp_path):
    return _export(_tiny(), tmp_path / "m.pt2")


def test_exported_program_loads_without_arch_whatever_the_extension(tmp_path, images):
    model = _tiny()
    path = _export(model, tmp_path / "model.weights")
    # A zip like torch.save's and TorchScript's, holding torch.save'd sample inputs: none of those.
    assert model_format(path) == "pt2"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # in eval mode already: no ModelWarning, and torch logs nothing either
        loaded = load_model(path)
    assert isinstance(loaded, ExportedModule)
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))
    _same_predictions(loaded, model, images)
    with pytest.warns(ModelWarning, match="architecture 'cw-mnist' is ignored"):
        load_model(path, arch="cw-mnist")


def test_exported_program_gets_normalisation_when_mean_std_given(exported, images):
    model = _tiny()
    loaded = load_model(exported, mean=(0.5,), std=(0.25,))
    assert isinstance(loaded, Normalized) and isinstance(loaded.net, ExportedModule)
    with torch.no_grad():
        assert torch.equal(loaded(images), model((images - 0.5) / 0.25))


def test_exported_module_takes_train_eval_and_passes_input_gradients(exported, images):
    loaded = load_model(exported)
    # The module torch.export.load gives refuses .eval(); its wrapper takes the calls the pipeline makes.
    assert loaded.train() is loaded and all(m.training for m in loaded.modules())
    with pytest.warns(ModelWarning, match="training mode"):
        check_model(loaded, images, 10)
    assert not any(m.training for m in loaded.modules())
    model = _tiny()
    # What an attack does: a channels_last frozen copy, and the gradient of the loss w.r.t. the input.
    for module in (loaded, fast_copy(loaded), fast_copy(Normalized(loaded, (0.0,), (1.0,)).eval())):
        x = images.clone().requires_grad_(True)
        loss = nn.functional.cross_entropy(module(x), torch.arange(len(images)))
        (grad,) = torch.autograd.grad(loss, x)
        x_ref = images.clone().requires_grad_(True)
        (expected,) = torch.autograd.grad(nn.functional.cross_entropy(model(x_ref), torch.arange(len(images))), x_ref)
        assert grad.abs().sum() > 0
        torch.testing.assert_close(grad, expected)


def test_exported_in_training_mode_is_refused(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Dropout(0.5), nn.Linear(1352, 10))
    path = _export(model.train(), tmp_path / "m.pt2")
    with pytest.raises(ConfigError, match=r"m\.pt2 was exported in training mode \(its graph runs "
                                          r"aten\.batch_norm\.default, aten\.dropout\.default in training mode\).*"
                                          r"call model\.eval\(\) before torch\.export\.export"):
        load_model(path)


def test_exported_for_a_fixed_batch_is_refused(tmp_path):
    path = _export(_tiny(), tmp_path / "m.pt2", shape=(4, 1, 28, 28), dynamic=False)
    with pytest.raises(ConfigError, match=r"m\.pt2 was exported for a fixed batch of 4 \(input shape \(4, 1, 28, 28\)\)"
                                          r".*dynamic_shapes=\(\{0: torch\.export\.Dim\.DYNAMIC\},\)"):
        load_model(path)


def test_check_model_wrong_input_shape_exported_names_the_guard(tmp_path, images):
    model = load_model(_export(_tiny(in_shape=(1, 32, 32)), tmp_path / "m.pt2", shape=(2, 1, 32, 32)))
    with pytest.raises(ConfigError, match=r"rejected input of shape \(6, 1, 28, 28\).*: Guard failed: .*== 32"):
        check_model(model, images, 10)


@pytest.mark.parametrize("cut", [0.5, 0.99])
def test_truncated_exported_program(exported, cut):
    # Cut near the end, the last thing left is the directory of the torch.save'd sample inputs stored inside.
    data = exported.read_bytes()
    path = exported.with_name("cut.pt2")
    path.write_bytes(data[:int(len(data) * cut)])
    with pytest.raises(ConfigError, match=r"cut\.pt2 is a damaged zip archive \(truncated download\?\); accepted"):
        load_model(path)


@pytest.mark.parametrize("change, match", [
    (lambda name, data: None if name.endswith("/weight_0") else data,
     r"PytorchStreamReader failed locating file data/weights/weight_0: file not found"),
    (lambda name, data: data[:3] if name.endswith("/weight_2") else data,
     r"Record data/weights/weight_2: size 3 is not a multiple of element size 4"),
    (lambda name, data: data[:len(data) // 2] if name.endswith("/models/model.json") else data,
     r"[A-Z][a-z ]+.*: line 1 column \d+"),  # the JSON decoder's own words
])
def test_damaged_exported_program_is_one_error(exported, capfd, change, match):
    path = _rewrite(exported, exported.with_name("bad.pt2"), change)
    capfd.readouterr()
    with pytest.raises(ConfigError, match=rf"cannot load torch.export archive .*bad\.pt2 \(damaged, or saved by an "
                                          rf"incompatible torch\?\): {match}"):
        load_model(path)
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err and "deserializing" not in err  # torch's own logged traceback stays quiet


def test_pt2_archive_without_a_program(exported):
    path = _rewrite(exported, exported.with_name("aoti.pt2"), lambda name, data: None if "/models/" in name else data)
    assert model_format(path) == "pt2"
    with pytest.raises(ConfigError, match=r"aoti\.pt2 is a PT2 archive without an exported program"):
        load_model(path)


def test_exported_program_with_pickled_objects_needs_trust(exported, monkeypatch):
    buffer = io.BytesIO()
    torch.save(((Marker(),), {}), buffer)
    path = _rewrite(exported, exported.with_name("marked.pt2"),
                    lambda name, data: buffer.getvalue() if name.endswith("/sample_inputs/model.pt") else data)
    # Also when the environment asks torch for unsafe loads by default; the environment is left as it was.
    monkeypatch.delenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", raising=False)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    UNPICKLED.clear()
    with pytest.raises(ConfigError, match=rf"marked\.pt2 is a torch.export archive holding pickled Python objects "
                                          rf"\(it names {__name__}\._mark\).*refuses by default.*`trust_pickle`"):
        load_model(path)
    assert UNPICKLED == []
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ and os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "1"
    assert isinstance(load_model(path, trust_pickle=True), ExportedModule)
    assert UNPICKLED == [True]


def test_exported_program_with_opaque_objects_needs_trust(exported):
    # torch.export.load restores these with plain pickle.loads; the file is refused before anything is read.
    root = zipfile.ZipFile(exported).namelist()[0].split("/")[0]
    path = exported.with_name("opaque.pt2")
    path.write_bytes(exported.read_bytes())
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(f"{root}/data/constants/opaque_obj_0", b"\x80\x04N.")
    with pytest.raises(ConfigError, match=rf"opaque\.pt2 is a torch.export archive holding pickled Python objects "
                                          rf"\(e\.g\. {root}/data/constants/opaque_obj_0\)"):
        load_model(path)


# --- logits in other outputs ------------------------------------------------------------------

@dataclass
class ClassifierOutput:
    """Shaped like a Hugging Face ImageClassifierOutput: optional loss, the logits, hidden states."""

    loss: torch.Tensor | None
    logits: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] = ()


class Scores(NamedTuple):
    features: torch.Tensor
    logits: torch.Tensor


LOGITS = torch.arange(6.0).view(2, 3)


@pytest.mark.parametrize("output", [
    LOGITS,
    ClassifierOutput(loss=None, logits=LOGITS, hidden_states=(torch.zeros(1),)),
    Scores(features=torch.zeros(2, 5), logits=LOGITS),  # a tuple, but `.logits` wins over the first element
    {"features": torch.zeros(2, 5), "logits": LOGITS},
    OrderedDict(logits=LOGITS),
    (LOGITS, torch.zeros(2, 5)),
    [LOGITS],
], ids=["tensor", "logits-attribute", "namedtuple-logits", "dict", "ordered-dict", "tuple", "list"])
def test_logits_of(output):
    assert logits_of(output) is LOGITS


@pytest.mark.parametrize("output, match", [
    ({"out": LOGITS, "aux": LOGITS}, r"model returned a dict without a 'logits' key \(keys: 'out', 'aux'\); "
                                     r"labelflip takes the logits from a tensor output"),
    ({f"k{i}": LOGITS for i in range(7)}, r"\(keys: 'k0', 'k1', 'k2', 'k3', 'k4', \.\.\.\)"),
    ({"logits": None}, r"model returned a dict whose 'logits' is a NoneType, not a tensor"),
    ((), r"model returned an empty tuple"),
    (([LOGITS], LOGITS), r"model returned a tuple whose first element is a list, not a tensor of logits"),
    (ClassifierOutput(loss=None, logits=None), r"model returned ClassifierOutput, expected a tensor of logits; "
                                               r"labelflip takes"),
    (None, r"model returned NoneType, expected a tensor of logits"),
])
def test_logits_of_rejects(output, match):
    with pytest.raises(ConfigError, match=match):
        logits_of(output)


class TupleNet(TinyNet):
    def forward(self, x):
        return super().forward(x), x.mean()


class DictNet(TinyNet):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        # TinyNet's forward spelled out: TorchScript cannot call super().
        return {"features": x.flatten(1), "logits": self.fc(self.drop(torch.relu(self.conv(x))).flatten(1))}


class HFNet(TinyNet):
    def forward(self, x):
        return ClassifierOutput(loss=None, logits=super().forward(x))


class NamedTupleNet(TinyNet):
    def forward(self, x: torch.Tensor) -> Scores:
        return Scores(features=x.flatten(1), logits=super().forward(x))


def test_logits_adapter_leaves_a_tensor_model_as_it_is(images):
    model = _tiny()
    before = model_sha256(model)
    assert logits_adapter(model, images) is model
    assert model_sha256(model) == before


@pytest.mark.parametrize("cls", [TupleNet, DictNet, HFNet, NamedTupleNet])
def test_logits_adapter_wraps_other_outputs(images, cls):
    model = _tiny()
    other = cls().eval()
    other.load_state_dict(model.state_dict())
    adapted = logits_adapter(other, images)
    assert isinstance(adapted, LogitsOutput) and adapted.model is other and not adapted.training
    check_model(adapted, images, 10)
    with torch.no_grad():
        assert torch.equal(adapted(images), model(images))
    x = images.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(adapted(x).sum(), x)
    assert grad.abs().sum() > 0


def test_logits_adapter_rejects_outputs_without_logits(images):
    class AuxNet(TinyNet):
        def forward(self, x):
            return {"out": super().forward(x), "aux": x}

    with pytest.raises(ConfigError, match=r"model returned a dict without a 'logits' key \(keys: 'out', 'aux'\)"):
        logits_adapter(AuxNet().eval(), images)
    with pytest.raises(ConfigError, match=r"model rejected input of shape \(6, 1, 28, 28\)"):
        logits_adapter(_tiny(in_shape=(3, 28, 28)), images)


@pytest.mark.parametrize("fmt", ["torchscript", "pt2", "pickle"])
def test_load_user_model_adapts_the_output(tmp_path, fmt):
    data = tiny_dataset()
    model = _tiny()
    net = DictNet().eval() if fmt != "pickle" else HFNet().eval()
    net.load_state_dict(model.state_dict())
    path = tmp_path / "m.model"
    if fmt == "torchscript":
        torch.jit.save(torch.jit.script(net), str(path))
    elif fmt == "pt2":
        _export(net, path)
    else:
        torch.save(net, path)
    loaded = load_user_model(path, data, Bounds(0.0, 1.0), arch=None, mean=None, std=None,
                             trust_pickle=fmt == "pickle")
    assert isinstance(loaded, LogitsOutput)
    images, _ = data.tensors("test", np.arange(5))
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))


# --- parsing -----------------------------------------------------------------------------------

def test_parse_channel_values():
    assert parse_channel_values("0.5", "mean") == (0.5,)
    assert parse_channel_values(" 0.485, 0.456 ,0.406 ", "mean") == (0.485, 0.456, 0.406)
    assert parse_channel_values("-1e-3", "mean") == (-0.001,)


@pytest.mark.parametrize("text, match", [
    ("", "`std`: expected one number"),
    ("  ", "`std`: expected one number"),
    ("abc", r"`std`: 'abc' is not a number"),
    ("0.2,,0.3", r"`std`: '' is not a number"),
    ("0.2,", r"`std`: '' is not a number"),
    ("nan", "`std`: values must be finite"),
    ("1,inf", "`std`: values must be finite"),
])
def test_parse_channel_values_rejects(text, match):
    with pytest.raises(ConfigError, match=match):
        parse_channel_values(text, "std")


def test_parse_bounds():
    assert parse_bounds("0,1") == (0.0, 1.0)
    assert parse_bounds("0, 255") == (0.0, 255.0)
    assert parse_bounds("-1,1") == (-1.0, 1.0)


@pytest.mark.parametrize("text, match", [
    ("0", "expected two numbers"), ("0,1,2", "expected two numbers"), ("1,1", "lower must be below upper"),
    ("1,0", "lower must be below upper"), ("0,x", "'x' is not a number"), ("-inf,1", "finite"), ("", "`bounds`"),
])
def test_parse_bounds_rejects(text, match):
    with pytest.raises(ConfigError, match=match):
        parse_bounds(text)


def test_parse_class_names_inline_and_from_file(tmp_path):
    assert parse_class_names("cat, dog,bird", 3) == ("cat", "dog", "bird")
    (tmp_path / "names.txt").write_text("T-shirt, top\nTrouser\nPullover\n\n", encoding="utf-8")
    assert parse_class_names(f"@{tmp_path / 'names.txt'}", 3) == ("T-shirt, top", "Trouser", "Pullover")


@pytest.mark.parametrize("text, match", [
    ("a,b", "got 2 names, but the model has 3 classes"),
    ("a,b,c,d", "got 4 names"),
    ("a,b,a", "duplicate names: 'a'"),
    ("a,,c", "empty name at position 2"),
    ("a,b, ", "empty name at position 3"),
])
def test_parse_class_names_rejects(text, match):
    with pytest.raises(ConfigError, match=match):
        parse_class_names(text, 3)


def test_parse_class_names_file_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot read .*missing\.txt"):
        parse_class_names(f"@{tmp_path / 'missing.txt'}", 3)
    (tmp_path / "gap.txt").write_text("a\n\nc\n")
    with pytest.raises(ConfigError, match=r"empty name in .*gap\.txt, line 2"):
        parse_class_names(f"@{tmp_path / 'gap.txt'}", 3)
