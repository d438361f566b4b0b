"""The training stage (export/): losses, networks, data adapter, tiny run -> ONNX -> parity, resume."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from scipy import ndimage
from skimage.metrics import structural_similarity

from export.data import TorchPairs
from export.losses import berhu, discriminator_loss, ms_ssim, ssim
from export.models import Discriminator, Generator
from export.train import TrainConfig, load_checkpoint, train
from wsi_deepr.data.dataset import PairDatasetWriter

from .conftest import shared_path


def _write_pairs(path, *, n=12, patch=48, seed=0):
    """Blurred/sharp pairs of smooth noise: 3 of every 4 fields train, 1 validates."""
    rng = np.random.default_rng(seed)
    w = PairDatasetWriter(path, patch_size=patch, channels=("R", "G", "B"), modality="brightfield",
                          kind="simulated", storage_dtype="uint8", shard=8)
    for i in range(n):
        t = ndimage.gaussian_filter(rng.random((patch, patch, 3)), (1, 1, 0))
        t = 0.2 + 0.6 * (t - t.min()) / (t.max() - t.min())
        z = float(rng.uniform(-3, 3))
        x = ndimage.gaussian_filter(t, (abs(z) + 0.5, abs(z) + 0.5, 0), mode="wrap")
        w.add(x, t, z_um=z, pixel_size_um=0.5, fov=i, split=int(i % 4 == 3), source=0, na=0.5)
    w.close(sources=[{"name": "noise", "pixel_size_assumed": False, "wavelengths_um": [0.61, 0.545, 0.465]}],
            settings={"builder": "test"})
    return path


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return _write_pairs(tmp_path_factory.mktemp("ds") / "pairs.zarr")


def _tiny(dataset, **kw) -> TrainConfig:
    base = {"dataset": str(dataset), "width": 4, "max_width": 16, "d_width": 4, "d_depth": 2, "batch_size": 2, "crop": 32,
                "g_steps": 2, "d_steps": 1, "iterations": 4, "warmup": 2, "val_every": 2, "log_every": 1, "val_samples": 3, "threads": 1}
    return TrainConfig(**(base | kw))


# ----------------------------------------------------------------------------- losses
def test_berhu_is_l1_below_c_and_scaled_l2_above():
    c = 0.5
    pred = torch.tensor([0.2, -0.4, 1.0, -2.0, 0.5])
    got = [float(berhu(p.view(1), torch.zeros(1), c=c)) for p in pred]
    want = [0.2, 0.4, (1.0 + c * c) / (2 * c), (4.0 + c * c) / (2 * c), 0.5]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # continuous value and slope (1) at the threshold
    e = torch.tensor([c - 1e-4, c + 1e-4], requires_grad=True)
    vals = torch.stack([berhu(v.view(1), torch.zeros(1), c=c) for v in e])
    vals.sum().backward()
    assert abs((vals[1] - vals[0]).item()) < 3e-4
    np.testing.assert_allclose(e.grad.numpy(), [1.0, 1.0], atol=1e-3)
    with pytest.raises(ValueError, match="c=0"):
        berhu(pred, pred, c=0)


@pytest.mark.parametrize("shape", [(1, 3, 64, 64), (2, 1, 180, 180)])
def test_ms_ssim_of_identical_images_is_one(shape):
    x = torch.rand(shape)
    assert float(ms_ssim(x, x)) == pytest.approx(1.0, abs=1e-5)
    assert float(ssim(x, x)) == pytest.approx(1.0, abs=1e-5)


def test_ssim_matches_scikit_image_at_one_scale():
    rng = np.random.default_rng(1)
    a = ndimage.gaussian_filter(rng.random((70, 90, 3)), (1.5, 1.5, 0))
    b = np.clip(a + rng.normal(0, 0.05, a.shape), 0, 1)
    want = structural_similarity(a, b, data_range=1.0, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False)
    ta, tb = (torch.from_numpy(v.transpose(2, 0, 1)[None].copy()) for v in (a, b))
    assert float(ssim(ta, tb)) == pytest.approx(want, abs=1e-5)


def test_ms_ssim_falls_with_blur_and_has_finite_gradients():
    x = torch.rand(2, 3, 96, 96)
    blurred = torch.nn.functional.avg_pool2d(x, 5, stride=1, padding=2)
    pred = blurred.clone().requires_grad_(True)
    value = ms_ssim(pred, x)
    assert 0.0 < value.item() < 0.9
    value.backward()
    assert torch.isfinite(pred.grad).all()
    d = discriminator_loss(torch.tensor([0.0]), torch.tensor([1.0]))
    assert float(d) == 0.0


# ----------------------------------------------------------------------------- networks
def test_untrained_generator_is_identity_for_any_size():
    gen = Generator(3, width=4, mean=[0.7, 0.5, 0.6], std=[0.2, 0.25, 0.2]).eval()
    for shape in [(1, 3, 64, 64), (2, 3, 37, 53)]:
        x = torch.rand(shape)
        with torch.no_grad():
            y = gen(x)
        assert y.shape == x.shape
        torch.testing.assert_close(y, x, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="width"):
        Generator(3, width=0)


def test_discriminator_gives_one_probability_per_image():
    d = Discriminator(3, width=4, depth=3)
    p = d(torch.randn(3, 3, 40, 56))
    assert p.shape == (3,)
    assert bool(((p > 0) & (p < 1)).all())


# ----------------------------------------------------------------------------- data
def test_torch_pairs_model_space_and_augmentation(pairs):
    import zarr

    raw = zarr.open_group(str(pairs), mode="r")
    data = TorchPairs(pairs, split="train", normalization="range")
    row = int(data.pairs.indices[0])
    inp, tgt = data.sample(0)
    np.testing.assert_allclose(inp, np.moveaxis(raw["inputs"][row], -1, 0) / 255.0, atol=1e-7)
    np.testing.assert_allclose(tgt, np.moveaxis(raw["targets"][row], -1, 0) / 255.0, atol=1e-7)
    # the same flip/rotation for input and target
    k_inp, k_tgt = data.sample(0, k=5)
    np.testing.assert_array_equal(k_inp, np.moveaxis(np.rot90(np.moveaxis(inp, 0, -1), 1)[:, ::-1], -1, 0))
    np.testing.assert_array_equal(k_tgt, np.moveaxis(np.rot90(np.moveaxis(tgt, 0, -1), 1)[:, ::-1], -1, 0))
    # zscore: standardised with the recorded input statistics, and to_range undoes it
    z = TorchPairs(pairs, split="train", normalization="zscore", preload=False)
    zi, _ = z.sample(0)
    back = z.to_range(torch.from_numpy(zi)[None])[0].numpy()
    np.testing.assert_allclose(back, inp, atol=1e-5)
    torch.testing.assert_close(data.to_std(torch.from_numpy(inp)[None]), torch.from_numpy(zi)[None],
                               atol=1e-5, rtol=0)
    assert data.card_info()["mpp"] == 0.5
    assert data.berhu_threshold() > 0
    x, y = TorchPairs(pairs, crop=32, augment=True).batch(np.random.default_rng(0), 3)
    assert x.shape == y.shape == (3, 3, 32, 32)
    # grey pairs: R = G = B in both images; contrast jitter keeps [0, 1]
    x, y = data.batch(np.random.default_rng(0), 4, gray_prob=1.0, contrast_jitter=0.5)
    for t in (x, y):
        assert float((t[:, 0] - t[:, 2]).abs().max()) == 0.0
        assert 0.0 <= float(t.min()) <= float(t.max()) <= 1.0
    # identity pairs: the input is the target itself; a contrast range scales both alike
    x, y = data.batch(np.random.default_rng(1), 4, identity_prob=1.0, contrast_range=(0.3, 0.5))
    torch.testing.assert_close(x, y)
    lo_c = data.batch(np.random.default_rng(1), 4, identity_prob=1.0, contrast_range=(0.3, 0.3))[1]
    hi_c = data.batch(np.random.default_rng(1), 4, identity_prob=1.0, contrast_range=(1.0, 1.0))[1]
    assert float(lo_c.std()) < 0.5 * float(hi_c.std())
    x, y = data.batch(np.random.default_rng(1), 4, identity_prob=0.0)
    assert not torch.equal(x, y)
    # focus weighting draws mild defocus more often
    uniform = np.abs(data.z_um[data.draw(np.random.default_rng(2), 4000)]).mean()
    weighted = np.abs(data.z_um[data.draw(np.random.default_rng(2), 4000, focus_weight_um=0.3)]).mean()
    assert weighted < 0.85 * uniform
    with pytest.raises(ValueError, match="crop"):
        TorchPairs(pairs, crop=30)
    with pytest.raises(ValueError, match="normalization"):
        TorchPairs(pairs, normalization="percentile:1:99")


# ----------------------------------------------------------------------------- tiny run, export, parity
@pytest.mark.slow
def test_tiny_training_run_exports_with_parity_and_card(pairs, tmp_path):
    from export.onnx_export import export_onnx, parity_check
    from export.train import main as train_main
    from wsi_deepr.inference.card import CARD_KEYS, load_model_info

    run = tmp_path / "run"
    assert train_main(["--dataset", str(pairs), "--out", str(run), "--width", "4", "--max-width", "16",
                       "--d-width", "4", "--d-depth", "2", "--batch-size", "2", "--crop", "32", "--g-steps", "2",
                       "--d-steps", "1", "--iterations", "3", "--warmup", "1", "--val-every", "3",
                       "--val-samples", "3", "--log-every", "1", "--threads", "1"]) == 0
    with open(run / "log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["kind"] for r in rows].count("val") == 1
    assert rows[-1]["val_ssim"]
    assert {r["phase"] for r in rows} == {"warmup", "gan"}
    gan = [r for r in rows if r["kind"] == "train" and r["phase"] == "gan"]
    assert all(float(r["c_adv"]) > 0 and float(r["d_loss"]) > 0 for r in gan)
    best = load_checkpoint(run / "best.pt")  # weights_only=True
    assert best["iteration"] == 3
    assert "generator" in best

    out = tmp_path / "tiny.onnx"
    report = export_onnx(run / "best.pt", out, card={"version": "0.0.1", "description": "test"})
    assert report["parity"]["max_abs_diff"] <= 1e-4
    assert len(report["parity"]["shapes"]) == 3  # random, odd-sized and real tiles
    info = load_model_info(out)
    assert info.card.modality.value == "brightfield"
    assert info.card.channels == 3
    assert info.card.mpp == 0.5
    assert info.card.normalization == "range"
    assert info.card.halo > 0
    assert info.card.mpp_range == (0.5, 0.5)  # the training pixel sizes, for scale-aware inference
    assert info.card.version == "0.0.1"
    assert not info.card.default
    import onnx

    meta = {p.key for p in onnx.load(str(out)).metadata_props}
    assert set(CARD_KEYS) <= meta
    assert (tmp_path / "tiny.onnx.sha256").read_text().split()[0] == info.sha256
    assert json.loads((tmp_path / "tiny.onnx.export.json").read_text())["sha256"] == info.sha256
    # parity_check is a real check: a generator that differs from the file fails it
    from export.onnx_export import ExportError
    from export.train import build_generator

    other = build_generator(best["meta"]["generator_config"], best["meta"]["generator_stats"])
    torch.nn.init.normal_(other.out.weight, std=0.5)
    with pytest.raises(ExportError, match="parity"):
        parity_check(out, other, [np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)])
    with pytest.raises(FileExistsError):
        export_onnx(run / "best.pt", out)

    # the validation table runs on the exported file (input / RL with the true PSF / output)
    from export.evaluate import Refocuser, evaluate_pairs, markdown_table

    model = Refocuser(out, threads=1)
    table = evaluate_pairs(model, pairs, max_samples=3, rl_iterations=3, margin=4)
    assert table["samples"] == 3
    assert all(r["n_rl"] == r["n"] for r in table["rows"])
    assert all(0 < r["ssim_rl"] <= 1 and 0 < r["ssim_output"] <= 1 for r in table["rows"])
    assert "RL-true-PSF" in markdown_table(table)
    # the MODEL_CARD text: card values as JSON, the training pixel-size range, the validation table, limits
    from export.evaluate import model_card_markdown

    text = model_card_markdown({"model": str(out), "sha256": info.sha256, "card": info.card.as_dict(),
                                "pairs": table}, limits=["a known limit"])
    assert info.sha256 in text
    assert "| mpp_range | [0.5, 0.5] |" in text
    assert "* a known limit" in text
    assert "| defocus_range_um | [" in text
    assert "RL-true-PSF" in text


@pytest.mark.slow
def test_resumed_run_matches_an_uninterrupted_one(pairs, tmp_path):
    straight = train(_tiny(pairs), tmp_path / "a")
    assert straight["iteration"] == 4
    # stopped after the first iteration (as by SIGTERM), then started again twice
    calls = {"n": 0}

    def stop_once() -> bool:
        calls["n"] += 1
        return calls["n"] == 1

    first = train(_tiny(pairs, iterations=4), tmp_path / "b", stop=stop_once)
    assert first["iteration"] == 1
    assert load_checkpoint(tmp_path / "b" / "last.pt")["iteration"] == 1
    train(_tiny(pairs, iterations=3), tmp_path / "b")
    resumed = train(_tiny(pairs, iterations=4, width=8), tmp_path / "b")  # stored config wins
    assert resumed["iteration"] == 4
    a, b = (load_checkpoint(tmp_path / r / "last.pt") for r in "ab")
    assert b["config"]["width"] == 4
    for key, value in a["generator"].items():
        torch.testing.assert_close(b["generator"][key], value, atol=1e-5, rtol=1e-4)
    for key, value in a["discriminator"].items():
        torch.testing.assert_close(b["discriminator"][key], value, atol=1e-5, rtol=1e-4)
    assert a["weights"] == pytest.approx(b["weights"], rel=1e-4)
    with open(tmp_path / "b" / "log.csv", newline="") as fh:
        its = [int(r["iteration"]) for r in csv.DictReader(fh) if r["kind"] == "train"]
    assert its == sorted(its)
    assert its[-1] == 4


def test_init_starts_a_new_run_from_another_runs_weights(pairs, tmp_path):
    import dataclasses

    train(_tiny(pairs, iterations=2), tmp_path / "a")
    src = load_checkpoint(tmp_path / "a" / "last.pt")
    # zero iterations: the new run's weights are exactly the initial ones
    train(dataclasses.replace(_tiny(pairs, iterations=0), init=str(tmp_path / "a" / "last.pt")), tmp_path / "b")
    b = load_checkpoint(tmp_path / "b" / "last.pt")
    assert b["iteration"] == 0
    assert b["config"]["init"].endswith("last.pt")
    for key, value in src["generator"].items():
        torch.testing.assert_close(b["generator"][key], value)
    for key, value in src["discriminator"].items():
        torch.testing.assert_close(b["discriminator"][key], value)
    # and it trains on from there, with identity pairs and a contrast range
    cfg = dataclasses.replace(_tiny(pairs, iterations=1), init=str(tmp_path / "a"), identity_prob=0.5,
                              contrast_range=(0.3, 1.3))
    assert train(cfg, tmp_path / "c")["iteration"] == 1
    assert tuple(load_checkpoint(tmp_path / "c" / "last.pt")["config"]["contrast_range"]) == (0.3, 1.3)
    with pytest.raises(FileNotFoundError, match="--init"):
        train(dataclasses.replace(_tiny(pairs), init=str(tmp_path / "none")), tmp_path / "d")


def test_init_from_an_exported_onnx_fine_tunes_a_shipped_model(pairs, tmp_path):
    import dataclasses

    from export.onnx_export import export_onnx

    train(_tiny(pairs, iterations=2), tmp_path / "a")
    src = load_checkpoint(tmp_path / "a" / "best.pt")
    export_onnx(tmp_path / "a" / "best.pt", tmp_path / "a.onnx", card={"version": "0.0.1", "description": "t"})
    # zero iterations from the ONNX: the generator is the exported one, its standardisation too
    train(dataclasses.replace(_tiny(pairs, iterations=0), init=str(tmp_path / "a.onnx")), tmp_path / "b")
    b = load_checkpoint(tmp_path / "b" / "last.pt")
    for key, value in src.get("generator_ema", src["generator"]).items():
        torch.testing.assert_close(b["generator"][key], value)
    assert b["meta"]["generator_stats"]["mean"] == pytest.approx(src["meta"]["generator_stats"]["mean"])
    assert b["meta"]["lineage"][-1]["checkpoint"].endswith("a.onnx")
    assert b["meta"]["lineage"][-1]["iteration"] == src["iteration"]
    # an ONNX that is not an exported generator is refused by name
    import onnx

    model = onnx.load(str(tmp_path / "a.onnx"))
    del model.metadata_props[:]
    onnx.save(model, str(tmp_path / "bare.onnx"))
    with pytest.raises(ValueError, match="bare.onnx.*not a Deep-R generator"):
        train(dataclasses.replace(_tiny(pairs, iterations=0), init=str(tmp_path / "bare.onnx")), tmp_path / "c")


def test_device_choice_and_the_hardware_in_the_lineage(pairs, tmp_path):
    import dataclasses

    from export.train import lineage_entry, resolve_device

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device='tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cpu"):
            resolve_device("cuda")
    train(_tiny(pairs, iterations=1, device="cpu"), tmp_path / "a")
    a = load_checkpoint(tmp_path / "a" / "last.pt")
    assert "CPU threads" in a["meta"]["hardware"] or "GPU" in a["meta"]["hardware"]
    # where a run goes on is not part of the run: a resumed run takes the device it is given now
    train(_tiny(pairs, iterations=2, device="auto"), tmp_path / "a")
    assert load_checkpoint(tmp_path / "a" / "last.pt")["config"]["device"] == "auto"
    # a model card's lineage says on what each earlier run trained
    train(dataclasses.replace(_tiny(pairs, iterations=0), init=str(tmp_path / "a" / "last.pt")), tmp_path / "b")
    lineage = load_checkpoint(tmp_path / "b" / "last.pt")["meta"]["lineage"]
    assert lineage[-1]["hardware"] == a["meta"]["hardware"]
    assert lineage_entry("x.pt", a)["hardware"] == a["meta"]["hardware"]


def test_ema_weights_are_validated_saved_and_resumed(pairs, tmp_path):
    import dataclasses

    cfg = dataclasses.replace(_tiny(pairs, iterations=2, val_every=2), ema=0.5)
    train(cfg, tmp_path / "a")
    last = load_checkpoint(tmp_path / "a" / "last.pt")
    best = load_checkpoint(tmp_path / "a" / "best.pt")
    key = "out.weight"
    assert not torch.equal(last["generator_ema"][key], last["generator"][key])  # an average, not a copy
    torch.testing.assert_close(best["generator"][key], last["generator_ema"][key])  # best.pt holds the average
    # resumed runs continue the same average
    straight = dataclasses.replace(cfg, iterations=4)
    train(straight, tmp_path / "b")
    train(dataclasses.replace(cfg, iterations=4), tmp_path / "a")
    a, b = (load_checkpoint(tmp_path / r / "last.pt") for r in "ab")
    torch.testing.assert_close(a["generator_ema"][key], b["generator_ema"][key], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="ema=1.5"):
        train(dataclasses.replace(cfg, ema=1.5), tmp_path / "c")


@pytest.mark.slow
def test_smear_stack_check_runs_on_the_real_focal_series():
    from export.evaluate import evaluate_stack

    folder = shared_path("stacks", "smear-brightfield")

    def identity(img):
        return img

    report = evaluate_stack(identity, folder)
    labels = [r["plane"] for r in report["rows"]]
    assert 0 not in labels
    assert {-5, -1, 1, 5} <= set(labels)
    for r in report["rows"]:  # an identity "model" changes nothing
        assert r["ssim_output"] == pytest.approx(r["ssim_input"])
    far = {r["plane"]: r["ssim_input"] for r in report["rows"]}
    assert far[1] > far[5]  # farther planes are less similar to z+00


def test_block_bootstrap_interval_brackets_the_mean_and_is_narrow():
    from export.evaluate import block_bootstrap_ci

    assert block_bootstrap_ci(np.full((100, 90), 0.25)) == pytest.approx([0.25, 0.25])
    rng = np.random.default_rng(0)
    noise = rng.normal(0.01, 0.05, (256, 256))
    lo, hi = block_bootstrap_ci(noise)
    assert lo < noise.mean() < hi
    assert hi - lo < 0.01
    assert block_bootstrap_ci(np.full((10, 10), -1.0)) == pytest.approx([-1.0, -1.0])  # one block


def test_stack_check_on_a_multipage_tiff_with_a_reference_plane(tmp_path):
    import tifffile
    from scipy.ndimage import gaussian_filter

    from export.evaluate import evaluate_stack

    rng = np.random.default_rng(0)
    sharp = gaussian_filter(rng.random((96, 96)), 1.0)
    sharp = (sharp - sharp.min()) / np.ptp(sharp) * 50000 + 1000
    planes = [gaussian_filter(sharp, abs(i - 3) * 0.8) for i in range(7)]  # plane 3 in focus
    path = tmp_path / "stack.ome.tif"
    tifffile.imwrite(path, np.stack(planes).astype(np.uint16), ome=True, metadata={"axes": "ZYX"})
    report = evaluate_stack(lambda a: a, path, reference=3, step=1)
    rows = {r["plane"]: r for r in report["rows"]}
    assert sorted(rows) == [-3, -2, -1, 1, 2, 3]
    assert report["reference"] == 3
    assert rows[1]["ssim_input"] > rows[3]["ssim_input"]
    assert not report["improves_all_1_to_5"]  # the identity improves nothing
    assert all(max(map(abs, r["change_ci95"])) < 1e-3 for r in rows.values())  # nothing changed
    from scipy.ndimage import gaussian_filter as blur

    worse = {r["plane"]: r for r in evaluate_stack(lambda a: blur(a, (2, 2, 0)), path, reference=3)["rows"]}
    for r in worse.values():  # blurring makes every plane less like the focus: the interval says so too
        lo, hi = r["change_ci95"]
        assert lo <= r["ssim_output"] - r["ssim_input"] <= hi < 0
    every_other = evaluate_stack(lambda a: a, path, reference=3, step=2)
    assert sorted(r["plane"] for r in every_other["rows"]) == [-1, 1]
    with pytest.raises(ValueError, match="reference plane 9"):
        evaluate_stack(lambda a: a, path, reference=9)


def test_refused_export_leaves_no_file_and_checkpoints_leave_no_temporaries(pairs, tmp_path, monkeypatch):
    import export.onnx_export as onnx_export
    from wsi_deepr.writers.atomic import temporaries

    run = tmp_path / "run"
    train(_tiny(pairs, iterations=1, warmup=1, val_every=1), run)
    assert (run / "last.pt").is_file()
    assert temporaries(run / "last.pt") == []
    assert sorted(p.name for p in run.iterdir() if p.name.endswith(".tmp")) == []
    monkeypatch.setattr(onnx_export, "MAX_BYTES", 1)  # every model is too large
    out = tmp_path / "models" / "big.onnx"
    with pytest.raises(onnx_export.ExportError, match="package limit"):
        onnx_export.export_onnx(run / "last.pt", out)
    assert not out.exists()
    assert sorted(p.name for p in out.parent.iterdir()) == []  # no temporary, no staging folder
