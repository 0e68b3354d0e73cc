# SPDX-License-Identifier: Apache-2.0
"""Checkpoints and weights files: another configuration, truncation, pickled code, another backbone, resuming."""

import hashlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import timm
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from lightning.pytorch import Callback
from torch.utils.data import DataLoader

from anomalib_mambaadv2 import MambaADv2, cli
from anomalib_mambaadv2.components.encoder import FrozenEncoder

SMALL = {"backbone": "resnet18", "pre_trained": False, "image_size": 64, "depths": [1, 2, 2, 1]}
MARKER = Path(__file__).parent / "_unpickled_code_ran"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def engine_for(root: Path, max_epochs: int = 1, callbacks: list[Callback] | None = None) -> Engine:
    return Engine(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        default_root_dir=root,
        enable_progress_bar=False,
        logger=False,
        callbacks=callbacks or [],
    )


class OrderedMVTec(MVTecAD):
    """The same training order every epoch and every run (a resumed run sees what the uninterrupted one saw)."""

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_data, batch_size=self.train_batch_size, shuffle=False, collate_fn=self.train_data.collate_fn
        )


def datamodule(root: Path, cls: type[MVTecAD] = MVTecAD) -> MVTecAD:
    return cls(root=root, category="tiles", train_batch_size=4, eval_batch_size=4, num_workers=0, seed=0)


@pytest.fixture(scope="module")
def checkpoint(mvtec_root, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("ckpt")
    engine_for(work).fit(model=MambaADv2(**SMALL), datamodule=datamodule(mvtec_root))
    return next(work.rglob("model.ckpt"))


def test_checkpoint_of_another_configuration_names_the_option(checkpoint, mvtec_root, tmp_path):
    before = digest(checkpoint)
    model = MambaADv2(**{**SMALL, "depths": [1, 1, 1, 1]})
    with pytest.raises(ValueError, match=r"saved with depths=\[1, 2, 2, 1\] \(this model: \[1, 1, 1, 1\]\)"):
        engine_for(tmp_path).test(model=model, datamodule=datamodule(mvtec_root), ckpt_path=checkpoint)
    assert digest(checkpoint) == before


def test_matching_checkpoint_loads(checkpoint):
    restored = MambaADv2.load_from_checkpoint(checkpoint)
    assert list(restored.hparams["depths"]) == SMALL["depths"]


def _as_before_2026_12(state: dict) -> dict:
    """The state dict as checkpoints saved before 2026-12-04 had it (the frequency branch was called ``second``)."""
    old = {k.replace(".frequency.", ".second."): v for k, v in state.items()}
    assert old.keys() != state.keys()  # the renaming applies to this model
    return old


def _assert_renamed_checkpoint_loads(checkpoint: Path, tmp_path: Path, rename: Callable[[dict], dict]) -> None:
    """``checkpoint`` with its state-dict keys renamed by ``rename`` loads to the same weights under today's keys."""
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["state_dict"] = rename(ckpt["state_dict"])
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    restored = MambaADv2.load_from_checkpoint(old)
    expected = MambaADv2.load_from_checkpoint(checkpoint).state_dict()
    assert restored.state_dict().keys() == expected.keys()
    assert all(torch.equal(restored.state_dict()[k], v) for k, v in expected.items())


def _assert_renamed_torch_state_dict_loads(rename: Callable[[dict], dict]) -> None:
    """A torch model's state dict renamed by ``rename`` loads strictly (no key missing or left over), same weights."""
    from anomalib_mambaadv2.torch_model import MambaADv2Model

    torch.manual_seed(0)
    source = MambaADv2Model(**SMALL)
    target = MambaADv2Model(**SMALL)
    target.load_state_dict(rename(source.state_dict()))
    assert all(torch.equal(target.state_dict()[k], v) for k, v in source.state_dict().items())


def test_checkpoint_from_before_the_branch_rename_loads(checkpoint, tmp_path):
    _assert_renamed_checkpoint_loads(checkpoint, tmp_path, _as_before_2026_12)


def test_torch_state_dict_from_before_the_branch_rename_loads():
    _assert_renamed_torch_state_dict_loads(_as_before_2026_12)


_OLD_FREQUENCY_NAMES = {  # the frequency branch's layers before 2026-12-05 (before conv_norm_act built them)
    ".project_in.0.": ".proj_in.",
    ".project_in.1.": ".norm_in.",
    ".filter_norm.0.": ".norm_filter.",
    ".project_out.0.": ".proj_out.",
    ".project_out.1.": ".norm_out.",
}


def _with_old_frequency_names(state: dict) -> dict:
    renamed = {}
    for key, value in state.items():
        for new, old in _OLD_FREQUENCY_NAMES.items():
            key = key.replace(new, old)
        renamed[key] = value
    assert renamed.keys() != state.keys()  # the renaming applies to this model
    return renamed


def test_state_dicts_with_the_old_frequency_layer_names_load(checkpoint, tmp_path):
    _assert_renamed_torch_state_dict_loads(_with_old_frequency_names)
    # a checkpoint with both renames (`second`, old layer names)
    _assert_renamed_checkpoint_loads(checkpoint, tmp_path, lambda s: _as_before_2026_12(_with_old_frequency_names(s)))


def test_truncated_checkpoint_is_named(checkpoint, tmp_path, monkeypatch, capsys):
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"truncated or corrupt.*last\.ckpt"):
        MambaADv2.load_from_checkpoint(cut)
    monkeypatch.setattr(sys, "argv", ["anomalib-mambaadv2", "test", "--model", "MambaADv2", "--ckpt_path", str(cut)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    assert "truncated or corrupt" in capsys.readouterr().err


class _RunsCode:
    """Unpickling this would create MARKER: it must never happen when loading a checkpoint or weights."""

    def __reduce__(self):
        return (Path.touch, (MARKER,))


def test_checkpoint_with_pickled_code_is_refused(checkpoint, mvtec_root, tmp_path):
    ckpt = torch.load(checkpoint, weights_only=False)
    ckpt["hyper_parameters"]["payload"] = _RunsCode()
    evil = tmp_path / "evil.ckpt"
    torch.save(ckpt, evil)
    MARKER.unlink(missing_ok=True)
    with pytest.raises(Exception, match=r"[Ww]eights only load failed"):
        MambaADv2.load_from_checkpoint(evil)
    with pytest.raises(Exception, match=r"[Ww]eights only load failed"):
        engine_for(tmp_path).test(model=MambaADv2(**SMALL), datamodule=datamodule(mvtec_root), ckpt_path=evil)
    assert not MARKER.exists()


def test_weights_of_another_backbone_name_both(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save(timm.create_model("resnet18").state_dict(), path)
    with pytest.raises(ValueError, match="holds weights of 'resnet18', not 'resnet34': pass backbone='resnet18'"):
        FrozenEncoder("resnet34", pre_trained=False, backbone_weights=path)
    torch.save(timm.create_model("tf_efficientnet_lite0").state_dict(), path)
    with pytest.raises(ValueError, match="holds weights of 'tf_efficientnet_lite0', not 'resnet18'"):
        FrozenEncoder("resnet18", pre_trained=False, backbone_weights=path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (lambda sd: sd, "truncated or corrupt"),
        (lambda sd: {**sd, "code": _RunsCode()}, "pickled objects besides tensors.*weights_only=True"),
    ],
    ids=["truncated", "pickled-code"],
)
def test_bad_weights_files_are_named(tmp_path, content, message):
    path = tmp_path / "weights.pth"
    torch.save(content(timm.create_model("resnet18").state_dict()), path)
    if message.startswith("truncated"):
        path.write_bytes(path.read_bytes()[:100_000])
    MARKER.unlink(missing_ok=True)
    with pytest.raises(ValueError, match=message):
        FrozenEncoder("resnet18", pre_trained=False, backbone_weights=path)
    assert not MARKER.exists()


def test_ckpt_path_last_resolves_to_the_newest_checkpoint(tmp_path):
    old = tmp_path / "MambaADv2/MVTecAD/tiles/v0/weights/lightning/model.ckpt"
    new = tmp_path / "MambaADv2/MVTecAD/tiles/v1/weights/lightning/model.ckpt"
    for path in (old, new):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
    os.utime(old, (1, 1))  # older by its modification time, whatever the file system's clock resolution
    argv = ["fit", "--model", "MambaADv2", "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", "last"]
    assert cli.resolve_last_checkpoint(argv)[-1] == f"--ckpt_path={new}"
    assert cli.resolve_last_checkpoint(["fit", "--ckpt_path", str(old)]) == ["fit", "--ckpt_path", str(old)]
    with pytest.raises(FileNotFoundError, match="no checkpoint under"):
        cli.resolve_last_checkpoint(["fit", "--default_root_dir", str(tmp_path / "none"), "--ckpt_path=last"])


class StopAfterFirstEpoch(Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True


class SeedEachStep(Callback):
    """Lightning checkpoints hold no random-number state: seed stochastic depth per step so runs can be compared."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        torch.manual_seed(1000 + trainer.global_step)


@pytest.mark.slow
def test_resumed_training_reaches_the_uninterrupted_weights(mvtec_root, tmp_path):
    def fit(root: Path, callbacks: list[Callback], ckpt_path: Path | None = None) -> MambaADv2:
        torch.manual_seed(0)
        model = MambaADv2(**SMALL)
        engine = engine_for(root, max_epochs=2, callbacks=callbacks)
        engine.fit(model=model, datamodule=datamodule(mvtec_root, OrderedMVTec), ckpt_path=ckpt_path)
        return model

    uninterrupted = fit(tmp_path / "a", [SeedEachStep()]).state_dict()
    interrupted = fit(tmp_path / "b", [SeedEachStep(), StopAfterFirstEpoch()]).state_dict()
    (saved,) = (tmp_path / "b").rglob("model.ckpt")
    resumed = fit(tmp_path / "b", [SeedEachStep()], ckpt_path=saved).state_dict()

    weights = [k for k in uninterrupted if k.startswith("model.stages")]
    assert weights
    assert max((uninterrupted[k] - interrupted[k]).abs().max().item() for k in weights) > 1e-4  # it did stop early
    assert max((uninterrupted[k] - resumed[k]).abs().max().item() for k in uninterrupted) <= 1e-6
