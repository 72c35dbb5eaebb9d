"""The shared contract (tests/contract.py) over backbone sources x tasks x inputs kinds: a
keras.applications family from a weights file, a TF Hub module, a KerasHub preset and a `.keras`
model file, single-label on the colour folder; multi-label on a KerasHub preset; regression of two targets on
keras.applications. (Multi-label applications images and multi-label hub texts keep it in
tests/test_multi_label.py, single-label hub texts in tests/test_text.py.)"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import contract
import tlkeras
from conftest import TINY
from test_backbone_files import source_file  # noqa: F401  (the .keras backbone fixture)
from test_multi_label import write_multilabel_csv
from test_regression import write_regression_csv

RUN = {"batch_size": 8, "report": False, "tensorboard": False, "verbose": 0, "image_size": 32}


@pytest.fixture(scope="module")
def multilabel_csv(tmp_path_factory):
    return write_multilabel_csv(str(tmp_path_factory.mktemp("contract-ml")), per_set=3)


@pytest.fixture(scope="module")
def regression_csv(tmp_path_factory):
    return write_regression_csv(str(tmp_path_factory.mktemp("contract-regression")), count=24)


def _source(name, request):
    """(backbone, options, stage-2 unfreeze) of each source."""
    if name == "applications":
        return TINY["backbone"], {"weights": request.getfixturevalue("backbone_weights"),
                                  "backbone_options": TINY["backbone_options"]}, "blocks:1"
    if name == "hub":
        return f"hub:{request.getfixturevalue('hub_image_module')}", {}, 4
    if name == "kerashub":
        return f"kerashub:{request.getfixturevalue('kerashub_preset')}", {}, 3
    return request.getfixturevalue("source_file"), {"backbone_options": {"preprocessing": "tf"}}, 10


@pytest.mark.parametrize("source,task", [("applications", "single_label"), ("hub", "single_label"),
                                         ("kerashub", "single_label"), ("model file", "single_label"),
                                         ("kerashub", "multi_label"), ("applications", "regression")])
def test_every_source_and_task_keeps_the_contract(source, task, request, tmp_path, image_folder):
    backbone, options, unfreeze = _source(source, request)
    data = {"multi_label": "multilabel_csv", "regression": "regression_csv"}.get(task)
    data = request.getfixturevalue(data) if data else image_folder
    if task == "regression":
        options = {**options, "label_column": ["age", "score"]}
    keras.utils.set_random_seed(0)
    fresh = tlkeras.build_model(backbone, 3, image_size=32, task=task,
                                **{k: v for k, v in options.items() if k != "label_column"})
    initial = contract.backbone_arrays(fresh)

    frozen = tlkeras.build_and_finetune(data, backbone=backbone, **RUN, **options, stage1={"epochs": 2},
                                        stage2={"epochs": 0}, export=False, output_dir=str(tmp_path / "stage1"))
    contract.check_stage1_leaves_backbone(initial, frozen)

    result = tlkeras.build_and_finetune(data, backbone=backbone, **RUN, **options, stage1={"epochs": 2},
                                        stage2={"epochs": 1, "unfreeze": unfreeze}, output_dir=str(tmp_path / "run"),
                                        restore_best=False)  # what stage 2 trained is checked: its last epoch
    assert tlkeras.model.model_info(result.model).task == task
    contract.check_stage2_changes_what_unfreeze_allows(initial, result)
    pixels = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype("float32")
    contract.check_reload_predicts_identically(result, pixels)
    blobs = [tf.io.encode_png(p.astype(np.uint8)).numpy() for p in pixels]  # lossless: the same pixels
    contract.check_export_answers_as_the_model(result, {"image_bytes": tf.constant(blobs)}, pixels)
