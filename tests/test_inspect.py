"""Looking inside a trained network: predict, retrieve, kernels and plot, each through the real command line,
checked against computations written out here (crops and mean subtraction by hand, brute-force distances)."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli
from PIL import Image

from alexnet.config import build_config
from alexnet.plots import curves_figure, kernel_grid, read_metrics
from alexnet.prepare.synthetic import draw
from alexnet.tools.inference import load_model
from alexnet.tools.retrieve import nearest
from alexnet.train import train

# the tiny net of tests/test_train.py: the demo preset's shape at small widths
SMALL = {"train.epochs": 3, "optim.batch_size": 16, "data.crop": 32, "train.log_every": 4,
         "model.widths": [16, 32, 32, 32, 32], "model.fc": [64, 64], "optim.lr": 0.02,
         "data.normalize": "mean-image", "model.init": "torchvision"}  # hand computations below: pixel-unit inputs
SIZE, CROP = 36, 32  # the store's image size (conftest's shapes_store) and the crop


@pytest.fixture(scope="session")
def trained(shapes_store, tmp_path_factory):
    run = tmp_path_factory.mktemp("inspect") / "run"
    assert train(build_config("demo", overrides=SMALL), str(shapes_store), run, progress=False) == 0
    return run


def png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def probabilities_by_hand(model, mean, image, ten_crop):
    """Softmax of the model on the centre crop (or the ten views) of an S x S image, written out here."""
    far, centre = SIZE - CROP, (SIZE - CROP) // 2
    x = image.astype(np.float32) - mean.numpy()
    corners = [(centre, centre), (0, 0), (0, far), (far, 0), (far, far)]
    views = [x[y:y + CROP, c:c + CROP] for y, c in (corners if ten_crop else corners[:1])]
    if ten_crop:
        views += [v[:, ::-1] for v in views]
    batch = torch.from_numpy(np.stack(views).copy()).permute(0, 3, 1, 2)
    with torch.no_grad():
        return F.softmax(model(batch), dim=1).mean(0)


@pytest.mark.parametrize("ten_crop", [False, True])
def test_predict_json_against_crops_by_hand(trained, tmp_path, ten_crop):
    rng = np.random.default_rng(1)
    image = draw("disc", SIZE, rng)  # already S x S: decoding keeps the pixels as they are (PNG, no resize)
    path = png(tmp_path / "disc" / "probe.png", image)
    other = png(tmp_path / "unlabelled" / "other.png", draw("cross", SIZE, rng))
    panel = tmp_path / "panel.png"
    args = ["predict", str(trained / "best.pt"), str(path), str(other), "--top", "3", "--json",
            "--panel", str(panel)] + (["--ten-crop"] if ten_crop else [])
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["views"] == ("ten crops" if ten_crop else "centre crop")
    first, second = out["predictions"]
    assert first["image"] == str(path) and first["true_class"] == "disc"  # from the folder's name
    assert second["true_class"] is None
    classes = ["cross", "disc", "h-stripes", "square"]  # sorted folder names
    model, _, info = load_model(trained / "best.pt")
    want = probabilities_by_hand(model, info.mean, image, ten_crop)
    values, indices = want.topk(3)
    top = first["top"]
    assert [t["class"] for t in top] == [classes[i] for i in indices.tolist()]
    assert [t["name"] for t in top] == [t["class"] for t in top]  # folder names are their own names
    np.testing.assert_allclose([t["probability"] for t in top], values.numpy(), atol=1e-5)
    for pred in out["predictions"]:
        probs = [t["probability"] for t in pred["top"]]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6 and min(probs) >= 0
    with Image.open(panel) as im:
        assert im.format == "PNG" and im.width > 300 and im.height > 300


def test_predict_folder_text_marks_true_class(trained, shapes_folder):
    r = run_cli("predict", str(trained / "best.pt"), str(shapes_folder / "val" / "square"), "--top", "2")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 12 + 1  # every image of the folder, then the tally
    assert all("[true: square]" in line for line in lines[:12])
    starred = sum("square*" in line for line in lines[:12])  # the true class among the top 2
    assert lines[12].startswith("12 images of known class:") and f"top-2 correct {starred} " in lines[12]


def test_predict_refuses_a_file_that_is_not_an_image(trained, tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a picture")
    r = run_cli("predict", str(trained / "best.pt"), str(bad))
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert "notes.jpg" in r.stderr and "not a usable image" in r.stderr


def fc7_by_hand(model, mean, images):
    """fc7 vectors of S x S uint8 images: centre crop, mean subtracted, the model's layers up to fc7's ReLU."""
    c = (SIZE - CROP) // 2
    x = torch.from_numpy(images[:, c:c + CROP, c:c + CROP].astype(np.float32) - mean.numpy()[c:c + CROP, c:c + CROP])
    x = x.permute(0, 3, 1, 2)
    with torch.no_grad():
        h = torch.flatten(model.avgpool(model.features(x)), 1)
        for layer in list(model.classifier)[:-1]:  # dropout is the identity in eval mode
            h = layer(h)
    return h.numpy().astype(np.float64)


def test_retrieve_self_match_and_brute_force(trained, shapes_store, tmp_path):
    from alexnet.data.store import open_store

    cache = tmp_path / "index"
    query = png(tmp_path / "q.png", draw("square", SIZE, np.random.default_rng(5)))
    args = ["retrieve", str(trained / "best.pt"), "--index", str(shapes_store), "--query", "store:7", str(query),
            "-k", "4", "--json", "--index-cache", str(cache), "--panel", str(tmp_path / "r.png")]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    self_match, by_file = out["results"]
    assert self_match["neighbours"][0]["index"] == 7 and self_match["neighbours"][0]["distance"] == 0.0

    store = open_store(shapes_store)
    train_split = store.split("train")
    model, _, info = load_model(trained / "best.pt")
    vectors = fc7_by_hand(model, info.mean, np.asarray(train_split.images))
    q = fc7_by_hand(model, info.mean, np.asarray(Image.open(query))[None])[0]
    dist = np.sqrt(((vectors - q) ** 2).sum(1))
    expected = np.argsort(dist, kind="stable")[:4]
    assert [n["index"] for n in by_file["neighbours"]] == expected.tolist()
    np.testing.assert_allclose([n["distance"] for n in by_file["neighbours"]], dist[expected], rtol=1e-4, atol=1e-5)
    labels = np.asarray(train_split.labels)
    assert [n["class"] for n in by_file["neighbours"]] == [store.classes[labels[i]] for i in expected]
    assert out["indexed_images"] == len(labels) == 192
    assert (tmp_path / "r.png").stat().st_size > 0

    # the index is kept: a second call reads it instead of computing it again
    saved = sorted(cache.glob("fc7-*.npy"))
    assert len(saved) == 1 and np.load(saved[0]).shape == (192, 64)
    np.testing.assert_allclose(np.load(saved[0]), vectors, rtol=1e-4, atol=1e-5)
    stamp = saved[0].stat().st_mtime_ns
    r2 = run_cli("retrieve", str(trained / "best.pt"), "--index", str(shapes_store), "--query", "store:0",
                 "--index-cache", str(cache), "-k", "1")
    assert r2.returncode == 0, r2.stderr
    assert ", read:" in r2.stdout and saved[0].stat().st_mtime_ns == stamp


def test_nearest_is_exact_across_blocks():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(1000, 24)).astype(np.float32) * 50
    vectors[500] = vectors[3] + 1e-3  # a near-duplicate, where the expanded form alone loses the order
    queries = np.concatenate([vectors[[3, 999]], rng.normal(size=(3, 24)).astype(np.float32) * 50])
    d, i = nearest(vectors, torch.from_numpy(queries), 5, torch.device("cpu"), block=128)
    brute = np.sqrt(((vectors[None].astype(np.float64) - queries[:, None]) ** 2).sum(-1))
    want = np.argsort(brute, axis=1, kind="stable")[:, :5]
    assert i.tolist() == want.tolist()
    np.testing.assert_allclose(d.numpy(), np.take_along_axis(brute, want, 1), rtol=1e-5, atol=1e-4)
    assert d[0, 0].item() == 0.0 and d[1, 0].item() == 0.0  # index images find themselves at distance 0


def test_kernel_grid_places_the_paper_towers():
    import alexnet

    weight = alexnet.build_model("paper").features[0].weight.detach().numpy()  # 96 x 3 x 11 x 11
    grid, positions = kernel_grid(weight, towers=2)
    assert len(positions) == 96
    ys = sorted({y for y, _ in positions})
    xs = sorted({x for _, x in positions})
    assert len(ys) == 6 and len(xs) == 16  # 3 rows of 16 per tower, like the paper's figure
    assert max(y for y, _ in positions[:48]) < min(y for y, _ in positions[48:])  # tower 1 above tower 2
    assert all(b - a >= 11 for a, b in zip(xs, xs[1:])) and all(b - a >= 11 for a, b in zip(ys, ys[1:]))
    for i, (y, x) in enumerate(positions):
        k = weight[i].transpose(1, 2, 0)
        want = (k - k.min()) / (k.max() - k.min())  # each kernel stretched to [0, 1] on its own
        np.testing.assert_allclose(grid[y:y + 11, x:x + 11], want, atol=1e-6)
    assert positions[0] == (ys[0], xs[0]) and positions[47] == (ys[2], xs[15]) and positions[48] == (ys[3], xs[0])


def test_kernels_command_draws_a_png(trained, tmp_path):
    out = tmp_path / "k.png"
    r = run_cli("kernels", str(trained / "best.pt"), "-o", str(out))
    assert r.returncode == 0, r.stderr
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width >= 600


def write_metrics(run, rows):
    run.mkdir(parents=True)
    lines = [json.dumps({"kind": "train", "epoch": 0, "step": 1, "loss": 9.0})]
    for epoch, (train_err, val1, val5, lr, dropped) in enumerate(rows):
        lines.append(json.dumps({"kind": "epoch", "epoch": epoch, "step": 10 * (epoch + 1), "train_loss": 1.0,
                                 "train_top1_error": train_err, "val_top1_error": val1, "val_top5_error": val5,
                                 "lr": lr, "epoch_time": 1.0, "lr_dropped": dropped}))
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n{\"kind\": \"epo")  # last line cut by a crash


def test_plot_reads_each_runs_epochs(tmp_path):
    a, b = tmp_path / "a" / "run", tmp_path / "b" / "run"
    write_metrics(a, [(80, 70, 40, 0.01, False), (60, 55, 30, 0.01, True), (40, 45, 20, 0.001, False)])
    write_metrics(b, [(90, 85, 60, 0.02, False), (70, 65, 45, 0.02, False)])
    assert [r["val_top1_error"] for r in read_metrics(a)] == [70, 55, 45]
    fig = curves_figure([a, b])
    top1, top5, lr = fig.axes
    curves = {line.get_label(): list(line.get_ydata()) for line in top1.get_lines()}
    assert curves["a/run validation"] == [70, 55, 45] and curves["b/run training"] == [90, 70]
    assert {line.get_label(): list(line.get_xdata()) for line in top5.get_lines()}["b/run validation"] == [1, 2]
    drops = [line.get_xdata()[0] for line in lr.get_lines() if line.get_linestyle() == ":"]
    assert drops == [2.5]  # decided after epoch 2, in effect from epoch 3

    out = tmp_path / "curves.png"
    r = run_cli("plot", str(a), str(b), "-o", str(out))
    assert r.returncode == 0, r.stderr
    with Image.open(out) as im:
        assert im.format == "PNG"
    r = run_cli("plot", str(tmp_path), "-o", str(out))
    assert r.returncode == 2 and "metrics.jsonl" in r.stderr and len(r.stderr.strip().splitlines()) == 1
