"""Exchange with the ecosystem: safetensors, ONNX (run by onnxruntime), TorchScript, and torchvision's weights in.

Every exported file is run by its own runtime and compared with the eager model fed crops normalised here
by hand; torchvision's alexnet is the reference for the imported checkpoint.
"""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import run_cli
from PIL import Image

from alexnet.config import build_config
from alexnet.tools.inference import load_model
from alexnet.train import train

SMALL = {"train.epochs": 1, "optim.batch_size": 16, "data.crop": 32, "train.log_every": 4,
         "model.widths": [16, 32, 32, 32, 32], "model.fc": [64, 64], "optim.lr": 0.02,
         "data.normalize": "mean-image", "model.init": "torchvision"}  # hand computations below: pixel-unit inputs


@pytest.fixture(scope="session")
def checkpoint(shapes_store, tmp_path_factory):
    run = tmp_path_factory.mktemp("export") / "run"
    assert train(build_config("demo", overrides=SMALL), str(shapes_store), run, progress=False) == 0
    return run / "best.pt"


def eager_logits(ckpt, crops):
    """uint8 NHWC centre crops -> logits of the checkpoint's model, the normalisation written out here."""
    model, cfg, info = load_model(ckpt)
    size, crop = info.mean.shape[0], crops.shape[1]
    top = (size - crop) // 2
    mean = info.mean[top:top + crop, top:top + crop]  # demo preset: the per-pixel mean image, no scaling
    assert cfg.data.normalize == "mean-image"
    with torch.no_grad():
        return model((crops.float() - mean).permute(0, 3, 1, 2)).numpy()


def random_crops(n, crop=32, seed=3):
    return torch.randint(0, 256, (n, crop, crop, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_onnx_matches_pytorch_in_onnxruntime(checkpoint, tmp_path, exporter):
    import onnx
    import onnxruntime

    out = tmp_path / "net.onnx"
    r = run_cli("export", str(checkpoint), "--format", "onnx", "--onnx-exporter", exporter, "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "max abs difference of the logits" in r.stdout
    graph = onnx.load(str(out)).graph
    lrn_ops = sum(node.op_type == "LRN" for node in graph.node)
    # the deprecated exporter honours the LRN's symbolic: ONNX's LRN, conv1 and conv2, one per tower; the
    # current one writes standard ops instead
    assert lrn_ops == (4 if exporter == "torchscript" else 0)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    crops = random_crops(5)  # another batch size than the export's
    got = session.run(None, {session.get_inputs()[0].name: crops.numpy()})[0]
    want = eager_logits(checkpoint, crops)
    assert got.shape == (5, 4)
    assert np.abs(got - want).max() < 1e-4


def test_torch_export_program_equals_eager(checkpoint, tmp_path):
    out = tmp_path / "net.pt2"
    r = run_cli("export", str(checkpoint), "--format", "export", "-o", str(out))
    assert r.returncode == 0, r.stderr
    program = torch.export.load(str(out)).module()
    for n in (1, 6):  # the batch size is free
        crops = random_crops(n, seed=11)
        with torch.no_grad():
            got = program(crops).numpy()
        np.testing.assert_allclose(got, eager_logits(checkpoint, crops), rtol=0, atol=1e-5)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.load is deprecated upstream
def test_torchscript_equals_eager(checkpoint, tmp_path):
    out = tmp_path / "net.pt"
    r = run_cli("export", str(checkpoint), "--format", "torchscript", "-o", str(out))
    assert r.returncode == 0, r.stderr
    scripted = torch.jit.load(str(out))
    crops = random_crops(4, seed=9)
    with torch.no_grad():
        got = scripted(crops).numpy()
    np.testing.assert_allclose(got, eager_logits(checkpoint, crops), rtol=0, atol=1e-5)


def test_safetensors_round_trip(checkpoint, tmp_path):
    from safetensors import safe_open

    from alexnet.tools.export import load_safetensors

    out = tmp_path / "net.safetensors"
    r = run_cli("export", str(checkpoint), "--format", "safetensors", "-o", str(out))
    assert r.returncode == 0, r.stderr
    ckpt = torch.load(checkpoint, weights_only=True)
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
        for name, tensor in ckpt["model"].items():
            assert torch.equal(f.get_tensor(name), tensor), name
        assert torch.equal(f.get_tensor("input.mean_image"), ckpt["mean"])
    assert json.loads(meta["config"]) == ckpt["config"]
    assert json.loads(meta["classes"]) == ckpt["classes"] == ["cross", "disc", "h-stripes", "square"]
    model, _, info = load_safetensors(out)
    original, _, _ = load_model(checkpoint)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), original(x))
    assert torch.equal(info.pca_eigenvectors, ckpt["pca_eigenvectors"])


def test_export_never_overwrites_without_asking(checkpoint, tmp_path):
    out = tmp_path / "taken.onnx"
    out.write_bytes(b"keep me")
    r = run_cli("export", str(checkpoint), "--format", "onnx", "-o", str(out))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--overwrite" in r.stderr
    assert out.read_bytes() == b"keep me"


def test_import_torchvision_gives_identical_logits_and_predictions(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.alexnet(weights=None).eval()
    with torch.no_grad():
        reference.classifier[6].weight.mul_(100)  # spread the classes apart: a top 5 without near-ties
    weights = tmp_path / "alexnet.pth"
    torch.save(reference.state_dict(), weights)
    ckpt = tmp_path / "tv.pt"
    r = run_cli("import-torchvision", str(weights), "-o", str(ckpt))
    assert r.returncode == 0, r.stderr

    model, cfg, info = load_model(ckpt)
    assert cfg.preset == "one-tower"
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))

    categories = torchvision.models.AlexNet_Weights.IMAGENET1K_V1.meta["categories"]
    assert info.class_names == list(categories)
    assert len(info.classes) == 1000 and info.classes == sorted(info.classes) and info.classes[0] == "n01440764"
    assert torch.allclose(info.mean[100, 7], torch.tensor([0.485, 0.456, 0.406]) * 255)
    vectors = info.pca_eigenvectors
    assert torch.allclose(vectors.T @ vectors, torch.eye(3), atol=2e-3)  # orthonormal columns
    assert torch.allclose(info.pca_eigenvalues, torch.tensor([0.2175, 0.0188, 0.0045]) * 255**2)

    # predict on the imported checkpoint: torchvision's own preprocessing gives the same top 5
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)  # already 256 x 256: decoding keeps it
    Image.fromarray(image).save(tmp_path / "photo.png")
    from torchvision.transforms import functional as TF

    t = TF.normalize(TF.center_crop(TF.to_tensor(image), 224), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    with torch.no_grad():
        want = F.softmax(reference(t[None]), dim=1)[0].topk(5)
    r = run_cli("predict", str(ckpt), str(tmp_path / "photo.png"), "--json")
    assert r.returncode == 0, r.stderr
    top = json.loads(r.stdout)["predictions"][0]["top"]
    assert [t["name"] for t in top] == [categories[i] for i in want.indices.tolist()]
    np.testing.assert_allclose([t["probability"] for t in top], want.values.numpy(), rtol=1e-4)


def test_import_torchvision_refuses_what_is_not_a_state_dict(tmp_path):
    bad = tmp_path / "weights.pth"
    bad.write_text("not torch")
    r = run_cli("import-torchvision", str(bad), "-o", str(tmp_path / "out.pt"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "out.pt").exists()


def test_export_shows_its_stages_on_a_terminal_and_not_with_no_progress(checkpoint, tmp_path):
    from conftest import run_cli_on_terminal

    status, stdout, shown = run_cli_on_terminal("export", str(checkpoint), "--format", "export",
                                                "-o", str(tmp_path / "a.pt2"))
    assert status == 0 and (tmp_path / "a.pt2").is_file(), shown
    assert "a.pt2: " in shown and "/3 [" in shown and "checking: the exported program" in shown
    assert "Instead got" not in shown  # torch.export warned about the temporary name once
    status, stdout, shown = run_cli_on_terminal("export", str(checkpoint), "--format", "export",
                                                "-o", str(tmp_path / "b.pt2"), "--no-progress")
    assert status == 0 and (tmp_path / "b.pt2").is_file()
    assert "/3 [" not in shown and "checking:" not in shown
