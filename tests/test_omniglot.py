"""Omniglot: the loader on the shared archives, the leak-free split, the sampler, download's
MD5 check, and a short training run that beats chance."""
import hashlib
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from suite.experiments.omniglot import data
from suite.experiments.omniglot.train import evaluate, train
from suite.experiments.omniglot.config import TrainConfig

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"
pytestmark = pytest.mark.skipif(not SHARED.exists(), reason=f"{SHARED} is not beside the checkout")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return data.small_split(SHARED, tmp_path_factory.mktemp("cache"))


def test_loader_reads_the_small_archives(small):
    train, test = small
    assert train.images.shape == (136, 20, 28, 28) and train.images.dtype == np.uint8
    assert test.images.shape == (106, 20, 28, 28)   # small2's 156 minus the 50 shared
    # Ink is 255 on a 0 background after LANCZOS: strokes cover a minority of pixels.
    assert train.images.max() == 255 and 5 < train.images.mean() < 60


def test_loader_reads_an_extracted_folder_like_the_zip(tmp_path, small):
    with zipfile.ZipFile(SHARED / "images_background_small1.zip") as z:
        z.extractall(tmp_path)
    folder = data.load(tmp_path / "images_background_small1")
    assert folder.names == small[0].names
    np.testing.assert_array_equal(folder.images, small[0].images)


def _hashes(images, rotations=(0,)):
    return {hashlib.sha1(np.ascontiguousarray(np.rot90(img, k, axes=(0, 1))).tobytes()).hexdigest()
            for stack in images for img in stack for k in rotations}


def test_no_test_character_is_seen_in_training_under_any_rotation(small):
    train, test = small
    assert not set(train.names) & set(test.names)
    assert not _hashes(train.images, (0, 1, 2, 3)) & _hashes(test.images)


def test_small2_alone_would_leak():
    # Why the split removes small1's characters from small2: the archives share 50 of them.
    a = data.load(SHARED / "images_background_small1.zip")
    b = data.load(SHARED / "images_background_small2.zip")
    assert len(set(a.names) & set(b.names)) == 50
    assert len(_hashes(a.images) & _hashes(b.images)) == 1000


def test_standard_split_sizes_on_a_fake_full_dataset(tmp_path, small):
    # 1623 characters in two archives (built from the small ones, renamed): 1200 / 423.
    rng = np.random.default_rng(0)
    for name, n_alpha in (("images_background", 30), ("images_evaluation", 20)):
        with zipfile.ZipFile(tmp_path / f"{name}.zip", "w") as z:
            count = 964 if name == "images_background" else 659
            for i in range(count):
                for d in range(2):
                    img = (rng.random((105, 105)) > 0.9).astype(np.uint8) * 255
                    from PIL import Image
                    import io
                    buf = io.BytesIO()
                    Image.fromarray(255 - img).save(buf, format="PNG")
                    z.writestr(f"{name}/{name}_A{i % n_alpha}/character{i:04d}/x_{d:02d}.png",
                               buf.getvalue())
    train, test = data.standard_split(tmp_path)
    assert (len(train.names), len(test.names)) == (1200, 423)
    assert not set(train.names) & set(test.names)
    again, _ = data.standard_split(tmp_path)
    assert again.names == train.names                 # deterministic


def test_sampler_shapes_labels_and_seed(small):
    train, _ = small
    s = data.TaskSampler(train, 5, 1, 15, seed=3)
    (xs, ys), (xq, yq) = s.sample()
    assert xs.shape == (5, 1, 28, 28) and xq.shape == (75, 1, 28, 28)
    assert ys.tolist() == [0, 1, 2, 3, 4] and sorted(yq.tolist()) == sorted(list(range(5)) * 15)
    assert 0.0 <= xs.min() and xs.max() <= 1.0
    (xs2, _), _ = data.TaskSampler(train, 5, 1, 15, seed=3).sample()
    assert torch.equal(xs, xs2)
    with pytest.raises(ValueError, match="k_shot \\+ k_query"):
        data.TaskSampler(train, 5, 10, 15)
    with pytest.raises(ValueError, match="n_way"):
        data.TaskSampler(train, 1, 1, 1)


def test_download_checks_md5(tmp_path):
    source = tmp_path / "mirror"
    source.mkdir()
    shutil.copy(SHARED / "images_background_small1.zip", source)
    url = source.as_uri() + "/{name}.zip"
    out = data.download(tmp_path / "dl", ["images_background_small1"], url=url)
    assert data.md5(out[0]) == data.SMALL["images_background_small1"]
    (source / "images_background_small2.zip").write_bytes(b"not the archive")
    with pytest.raises(ValueError, match="MD5"):
        data.download(tmp_path / "dl", ["images_background_small2"], url=url)
    assert not (tmp_path / "dl" / "images_background_small2.zip").exists()


def test_short_training_beats_chance_and_resumes(small, tmp_path):
    train_chars, test_chars = small
    cfg = TrainConfig("fomaml", n_way=5, k_shot=1, k_query=5, inner_steps=5, inner_lr=0.4,
                      meta_batch=4, outer_lr=3e-3, max_iterations=40, eval_tasks=100,
                      checkpoint_every=20)
    untrained = TrainConfig(**{**cfg.as_dict(), "max_iterations": 0})
    before = evaluate(untrained, train(untrained, train_chars, tmp_path / "u").theta,
                      test_chars)["plain-gd"]
    learner = train(cfg, train_chars, tmp_path / "run")
    after = evaluate(cfg, learner.theta.detach(), test_chars)
    # FOMAML adapts by plain GD: both evaluations are the same computation.
    assert after["as-trained"] == after["plain-gd"]
    after = after["plain-gd"]
    # Chance is 20%; with 100 tasks x 25 queries the 95% interval is about +-3 points.
    assert after["accuracy"] - after["ci95"] > 0.2 + 0.15
    assert after["accuracy"] > before["accuracy"]
    resumed = train(TrainConfig(**{**cfg.as_dict(), "max_iterations": 45}), train_chars,
                    tmp_path / "run")
    assert resumed.iteration == 45
