"""Transfer (Tables 4-7, Fig. 9): frozen features + linear classifiers on a new data set."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from torch import nn

from deconvnet_attr.analysis.transfer import digits_data, train_from_scratch, transfer
from deconvnet_attr.viz import plot_transfer


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10)
    ).eval()


def test_digits_data_is_a_stratified_resized_split_of_sklearns_digits():
    (train_x, train_y), (test_x, test_y) = digits_data((3, 16, 16))
    digits = load_digits()
    assert len(train_y) + len(test_y) == len(digits.target) == 1797
    assert train_x.shape[1:] == (3, 16, 16) and 0 <= train_x.min() and train_x.max() <= 1
    for c in range(10):  # half of each class (rounded) in the test split
        assert int((test_y == c).sum()) == round(0.5 * (digits.target == c).sum())
    # every image is one of the digits, resized by bilinear interpolation, on every channel
    images = torch.as_tensor(digits.images, dtype=torch.float32)[:, None] / 16
    resized = F.interpolate(images, size=(16, 16), mode="bilinear", align_corners=False)
    first = (resized - test_x[:1, :1]).flatten(1).abs().amax(1).argmin()
    torch.testing.assert_close(test_x[0, 2], resized[first, 0])
    with pytest.raises(ValueError, match="1.5"):
        digits_data(test_fraction=1.5)


def test_transfer_matches_sklearn_on_the_pooled_features_of_the_same_draw():
    model = _net()
    (train_x, train_y), test = digits_data((1, 8, 8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = transfer(model, {"relu": "1"}, (train_x, train_y), test, per_class=(4,), repeats=1)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    # by hand: the draw (seeded permutation per class), 2x2-pooled relu features, sklearn
    rng, labels = np.random.default_rng(0), train_y.numpy()
    picked = np.sort(
        np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:4] for c in range(10)])
    )
    with torch.no_grad():
        feats = [
            F.adaptive_avg_pool2d(model[1](model[0](x)), 2).flatten(1).numpy()
            for x in (train_x, test[0])
        ]
    scaler = StandardScaler().fit(feats[0][picked])
    classifiers = (
        ("softmax", LogisticRegression(max_iter=1000)),
        ("svm", LinearSVC(max_iter=5000)),
    )
    for kind, clf in classifiers:
        clf.fit(scaler.transform(feats[0][picked]), labels[picked])
        want = 100 * clf.score(scaler.transform(feats[1]), test[1].numpy())
        assert result.accuracy[kind]["relu"][0, 0] == pytest.approx(want)
    assert result.features == {"relu": 16} and result.n_test == len(test[1])
    header, *rows = result.records()
    assert header == ["classifier (n = 4 per class)", "relu"]
    assert [r[0] for r in rows] == ["softmax", "svm"]
    with pytest.raises(ValueError, match="'tree'"):
        transfer(model, ["1"], (train_x, train_y), test, classifiers=("tree",))
    with pytest.raises(ValueError, match=r"\(5, 2\)"):
        transfer(model, ["1"], (train_x, train_y), test, per_class=(5, 2))


def test_from_scratch_row_and_figure():
    (train_x, train_y), test = digits_data((1, 8, 8))
    result = transfer(
        _net(),
        ["1"],
        (train_x, train_y),
        test,
        per_class=(2, 8),
        repeats=2,
        scratch=_net,
        scratch_steps=30,
    )
    assert result.scratch is not None and result.scratch.shape == (2, 2)
    assert ((0 <= result.scratch) & (result.scratch <= 100)).all()
    net = train_from_scratch(_net, train_x[:20], train_y[:20], steps=30)
    assert not net.training
    # trained: the loss on its own images is below the untrained copy's
    with torch.no_grad():
        trained = F.cross_entropy(net(train_x[:20]), train_y[:20])
        untrained = F.cross_entropy(_net()(train_x[:20]), train_y[:20])
    assert trained < untrained
    assert result.records()[-1][0] == "from scratch"
    fig = plot_transfer(result)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["frozen layers + softmax", "frozen layers + svm"]


# --- the deconvnet-attr transfer command ------------------------------------------------------


def test_transfer_command_writes_table7_and_fig9(tmp_path, capsys):
    import csv

    from deconvnet_attr.cli import main
    from deconvnet_attr.models import load_reference, zfnet_fashion

    out = tmp_path / "t"
    argv = ["transfer", "--out", str(out), "--per-class", "1,3", "--repeats", "2"]
    argv += ["--layers", "norm1,relu7", "--scratch-steps", "3", "--threads", "1"]
    assert main(argv) == 0
    assert (out / "fig9-transfer.png").read_bytes()[:4] == b"\x89PNG"
    table = list(csv.reader(open(out / "table7.csv")))
    # the same experiment called directly (same seed, draws, features, classifiers)
    want = transfer(
        load_reference(),
        {"norm1": "norm1", "relu7": "relu7"},
        *digits_data((1, 28, 28)),
        per_class=(1, 3),
        repeats=2,
        scratch=zfnet_fashion,
        scratch_steps=3,
    )
    assert table == want.records()
    rows = list(csv.DictReader(open(out / "transfer.csv")))
    assert len(rows) == 2 * 2 * (2 * 2 + 1)  # n x draws x (classifiers x layers + scratch)
    n3 = [float(r["accuracy (%)"]) for r in rows if r["per_class"] == "3" and r["layer"] == "relu7"]
    svm_n3 = want.accuracy["svm"]["relu7"][1]
    assert sorted(n3) == sorted(
        [round(v, 2) for v in [*want.accuracy["softmax"]["relu7"][1], *svm_n3]]
    )
    assert "| softmax |" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--per-class", "1,x"], "--per-class must be comma-separated integers, got '1,x'"),
        (["--repeats", "0"], "--repeats must be >= 1, got 0"),
        (["--model", "resnet18"], "--model 'resnet18' is not a deconvnet-attr ZFNet"),
        (["--data", "fashion-heldout", "--classes", "3,3"], "distinct indices in 0..9, got [3, 3]"),
        (["--checkpoint", "/nowhere.pt"], "/nowhere.pt"),
    ],
)
def test_transfer_command_user_errors_are_one_line(tmp_path, capsys, extra, message):
    from deconvnet_attr.cli import main

    assert main(["transfer", "--out", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_fashion_heldout_data_halves_each_chosen_class_of_the_test_split(tmp_path):
    from test_data import write_fashion_root

    from deconvnet_attr.data import load_fashion_mnist
    from deconvnet_attr.transfer_cli import fashion_heldout_data

    root = write_fashion_root(tmp_path, n_train=10, n_test=40)  # 4 test images per class
    (train_x, train_y), (test_x, test_y) = fashion_heldout_data([7, 2], root)
    images, labels = load_fashion_mnist("test", root)
    assert train_y.tolist() == [0, 0, 1, 1] and test_y.tolist() == [0, 0, 1, 1]
    for x, y in ((train_x, train_y), (test_x, test_y)):
        for image, new in zip(x, y, strict=True):  # each image is a test image of its class
            match = (images - image).flatten(1).abs().amax(1) == 0
            assert labels[match].tolist() == [[7, 2][new]]
    both = torch.cat([train_x, test_x]).flatten(1)
    assert len(torch.unique(both, dim=0)) == 8  # the halves are disjoint, nothing left out
