"""Choosing the backbone before fine-tuning it (tlkeras.ranking): LogME against its own equations and
the invariances it promises, the ranking on a toy set with an informative and an information-free
candidate, candidates that cannot run, `tlkeras rank`, and `backbone: auto` training the winner."""

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import save_colour_backbone as save_backbone, write_image_folder
from tlkeras import cli
from tlkeras.config import FinetuneConfig
from tlkeras.errors import ConfigError, TlkerasError
from tlkeras.ranking import Ranking, logme, parse_candidates, rank_backbones
from tlkeras.ranking.choose import choose_backbone

# === LogME ===


def direct_logme(features, labels, iterations=500):
    """The paper's Algorithm 1 written with D x D matrices and solves (no SVD), run to its fixed point (500
    iterations: converged to 1e-10 on these cases; far more and the solves lose precision)."""
    y_all = np.eye(labels.max() + 1)[labels]
    n, d = features.shape
    gram = features.T @ features
    eigenvalues = np.linalg.eigvalsh(gram)
    out = []
    for y in y_all.T:
        alpha = beta = 1.0
        for _ in range(iterations):
            m = beta * np.linalg.solve(alpha * np.eye(d) + beta * gram, features.T @ y)
            gamma = np.sum(beta * eigenvalues / (alpha + beta * eigenvalues))
            alpha, beta = gamma / (m @ m), (n - gamma) / np.sum((features @ m - y) ** 2)
        a = alpha * np.eye(d) + beta * gram
        m = beta * np.linalg.solve(a, features.T @ y)
        evidence = (n / 2 * np.log(beta) + d / 2 * np.log(alpha) - n / 2 * np.log(2 * np.pi)
                    - beta / 2 * np.sum((features @ m - y) ** 2) - alpha / 2 * m @ m - np.linalg.slogdet(a)[1] / 2)
        out.append(evidence / n)
    return float(np.mean(out))


@pytest.fixture
def separable():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 200)
    features = np.concatenate([np.eye(3)[labels] * 2 + rng.normal(0, 0.5, (200, 3)), rng.normal(0, 1, (200, 5))], 1)
    return features, labels


def test_logme_is_the_papers_evidence_at_its_fixed_point(separable):
    features, labels = separable
    assert logme(features, labels) == pytest.approx(direct_logme(features, labels), abs=1e-6)
    rng = np.random.default_rng(1)  # fewer examples than dimensions: the SVD branch
    wide, few = rng.normal(size=(24, 40)), rng.integers(0, 2, 24)
    assert logme(wide, few) == pytest.approx(direct_logme(wide, few), abs=1e-5)


def test_logme_scores_informative_features_above_shuffled_labels_and_noise(separable):
    features, labels = separable
    rng = np.random.default_rng(2)
    informative = logme(features, labels)
    assert informative > logme(features, rng.permutation(labels)) + 0.2
    assert informative > logme(rng.normal(size=features.shape), labels) + 0.2


def test_logme_is_invariant_where_the_model_promises_it(separable):
    features, labels = separable
    base = logme(features, labels)
    rotation, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(8, 8)))
    assert logme(features @ rotation, labels) == pytest.approx(base, abs=1e-6)
    assert logme(features * 37.5, labels) == pytest.approx(base, abs=1e-6)  # one scale for all: alpha absorbs it
    assert logme(np.concatenate([features, features], 1), labels) == pytest.approx(base, abs=1e-6)  # every column twice
    assert logme(np.concatenate([features, np.zeros((200, 4))], 1), labels) == pytest.approx(base, abs=1e-6)
    # Not promised: one column alone scaled (or duplicated) changes the isotropic prior's fit.
    stretched = features.copy()
    stretched[:, 0] *= 10
    assert abs(logme(stretched, labels) - base) > 1e-3


def test_logme_of_multi_label_rows_is_the_mean_over_labels(separable):
    features, labels = separable
    rows = np.eye(3)[labels]
    rows[:, 2] = (labels != 1).astype(float)  # a label that overlaps the others
    each = [logme(features, rows[:, [k]]) for k in range(3)]
    assert logme(features, rows) == pytest.approx(np.mean(each), abs=1e-9)
    assert logme(features, np.eye(3)[labels]) == pytest.approx(logme(features, labels), abs=1e-9)


def test_logme_refuses_mismatched_inputs():
    with pytest.raises(ValueError, match="3 labels for 4 feature rows"):
        logme(np.zeros((4, 2)), [0, 1, 0])
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        logme(np.zeros(4), [0, 1, 0, 1])


# === Candidates ===


def test_candidates_are_parsed_and_bad_lists_refused(tmp_path):
    assert parse_candidates(" auto: a , b.keras") == [{"backbone": "a"}, {"backbone": "b.keras"}]
    assert FinetuneConfig(data=None).merged({"backbone": ["mobilenetv2", "resnet50"]}).backbone == \
        "auto:mobilenetv2,resnet50"
    with pytest.raises(ConfigError, match="names no backbone"):
        parse_candidates("auto:")
    with pytest.raises(ConfigError, match="mobilenetv2 listed twice"):
        parse_candidates("auto:mobilenetv2,mobilenetv2")
    with pytest.raises(ConfigError, match="mobilenetv2 and MobileNetV2 are the same backbone"):
        parse_candidates("auto:mobilenetv2,MobileNetV2")
    (tmp_path / "m.keras").write_bytes(b"")
    os.symlink(tmp_path / "m.keras", tmp_path / "link.keras")
    with pytest.raises(ConfigError, match=r"m.keras and .*link.keras are the same backbone"):
        parse_candidates([str(tmp_path / "m.keras"), str(tmp_path / "link.keras")])
    # two settings of one backbone, told apart by name or by their settings, are two candidates
    assert len(parse_candidates([{"backbone": "mobilenetv2", "name": "a"}, {"backbone": "mobilenetv2", "name": "b"}])) == 2
    assert len(parse_candidates([{"backbone": "mobilenetv2"}, {"backbone": "mobilenetv2", "image_size": 96}])) == 2
    with pytest.raises(ConfigError, match="3 is not a backbone name"):
        parse_candidates(["mobilenetv2", 3])


def test_ranking_orders_by_the_chosen_score_and_round_trips():
    entries = [{"backbone": "a", "logme": -0.9, "probe_accuracy": 0.9, "seconds": 1.0},
               {"backbone": "b", "logme": -0.5, "probe_accuracy": 0.6, "seconds": 1.0}]
    by_logme, by_probe = Ranking(entries, [{"backbone": "c", "reason": "no"}], by="logme"), Ranking(entries)
    assert [e["backbone"] for e in by_logme.entries] == ["b", "a"]
    assert [e["backbone"] for e in by_probe.entries] == ["a", "b"]
    again = Ranking.from_list(by_logme.as_list())
    assert [e["backbone"] for e in again.entries] == ["b", "a"] and again.failed == [{"backbone": "c", "reason": "no"}]


# === Ranking real candidates ===


@pytest.fixture(scope="module")
def candidates(tmp_path_factory):
    folder = tmp_path_factory.mktemp("candidates")
    return save_backbone(str(folder / "colours.keras"), True), save_backbone(str(folder / "constant.keras"), False)


@pytest.fixture(scope="module")
def colour_folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("rank-colours"), per_class=12, seed=5)


SHARED = {"image_size": 32, "batch_size": 8, "stage1": {"epochs": 15, "learning_rate": 0.05}, "seed": 0}


def test_rank_backbones_puts_the_informative_candidate_first_and_lists_the_ones_that_cannot_run(
        tmp_path, candidates, colour_folder):
    informative, constant = candidates
    result = rank_backbones(
        colour_folder, [constant, "mobilenetv2x", informative, {"backbone": "mobilenetv2", "image_size": 16},
                        {"backbone": "mobilenetv2", "weights": str(tmp_path / "missing.weights.h5"),
                         "name": "mobilenetv2-missing"}],
        output_dir=str(tmp_path / "out"), **SHARED)
    assert [e["backbone"] for e in result.entries] == [informative, constant]
    best, worst = result.entries
    assert best["logme"] > worst["logme"] + 0.1
    assert best["probe_accuracy"] >= 0.85 and worst["probe_accuracy"] <= 0.5  # 3 balanced classes: chance is 1/3
    assert best["feature_dims"] == 4 and best["train_count"] + best["val_count"] == 36
    # by auto: under 50 training images per class, the probe decides (LogME was unreliable on few images)
    assert result.by == "probe" and f"only {best['smallest_class']} training examples" in result.why
    assert best["smallest_class"] == best["train_count"] // 3  # three balanced classes
    assert best["seconds"] >= best["seconds_features"] > 0 and best["peak_rss_mb"] > 100
    reasons = {f["backbone"]: f["reason"] for f in result.failed}
    assert "Did you mean 'mobilenetv2'" in reasons["mobilenetv2x"]
    assert "below the minimum" in reasons["mobilenetv2"]
    assert "missing.weights.h5" in reasons["mobilenetv2-missing"]
    saved = json.loads((tmp_path / "out" / "ranking.json").read_text())
    assert [e["backbone"] for e in saved] == [informative, constant, "mobilenetv2x", "mobilenetv2",
                                              "mobilenetv2-missing"]
    assert [e["rank"] for e in saved] == [1, 2, None, None, None] and saved[0]["recommended"] is True
    assert {"backbone", "logme", "probe_accuracy", "seconds"} <= set(saved[0]) and saved[2]["error"]
    assert (tmp_path / "out" / "ranking.png").stat().st_size > 1000


def test_a_sample_ranks_every_candidate_on_the_same_rows_in_proportion_to_the_classes(tmp_path, candidates,
                                                                                       colour_folder):
    informative, constant = candidates
    twice = [informative, {"backbone": informative, "name": "same-again"}, constant]
    result = rank_backbones(colour_folder, twice, sample=12, **SHARED)
    first, again, worst = result.entries
    assert [e["backbone"] for e in result.entries] == [informative, "same-again", constant]
    full = first["sampled_from"]
    assert full > 12 and all(e["train_count"] == 12 and e["sampled_from"] == full for e in result.entries)
    assert first["smallest_class"] == 4  # three balanced classes, in proportion
    assert again["logme"] == first["logme"] and first["logme"] > worst["logme"] + 0.1  # the same rows for both
    whole = rank_backbones(colour_folder, [informative], sample=10_000, **SHARED).entries[0]
    assert whole["train_count"] == full and "sampled_from" not in whole  # a sample as large as the data: all of it
    with pytest.raises(TlkerasError, match=r"^sample: 1 is not valid: use a number of training examples"):
        rank_backbones(colour_folder, [informative], sample=1, **SHARED)
    too_few = CliRunner().invoke(cli.main, ["rank", "--data", colour_folder, "--backbones", f"{informative},{constant}",
                                            "--image-size", "32", "--sample", "2", "--output-dir", str(tmp_path / "2")])
    assert too_few.exit_code == 1  # once, not against each candidate: no candidate can rank on 2 of 3 classes
    assert too_few.output.count("sample: 2 training examples cannot hold one of each of the 3 classes; use --sample "
                                "3 or more") == 1, too_few.output
    out = tmp_path / "cli"
    ran = CliRunner().invoke(cli.main, ["rank", "--data", colour_folder, "--backbones", informative, "--image-size",
                                        "32", "--sample", "12", "--no-probe", "--output-dir", str(out)])
    assert ran.exit_code == 0, ran.output
    assert json.loads((out / "ranking.json").read_text())[0]["train_count"] == 12


def test_rank_backbones_on_multi_label_data(tmp_path, candidates):
    from test_multi_label import write_multilabel_csv

    informative, constant = candidates
    csv_path = write_multilabel_csv(str(tmp_path), per_set=5)
    result = rank_backbones(csv_path, [constant, informative], **SHARED)
    assert [e["backbone"] for e in result.entries] == [informative, constant]
    assert result.entries[0]["probe_metric"] == "micro-F1"
    assert result.entries[0]["probe_accuracy"] > result.entries[1]["probe_accuracy"]


def test_cli_rank_prints_the_table_and_the_recommendation(tmp_path, candidates, colour_folder):
    informative, constant = candidates
    out = tmp_path / "ranked"
    result = CliRunner().invoke(cli.main, [
        "rank", "--data", colour_folder, "--backbones", f"{constant},{informative},efficientnetb9",
        "--image-size", "32", "--output-dir", str(out), "--by", "logme", "--set", "stage1.epochs=15",
        "--set", "stage1.learning_rate=0.05"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["rank", "backbone", "LogME"])
    assert lines[header + 1].split()[:3] == ["1", informative, "*"]
    assert lines[header + 2].split()[:2] == ["2", constant]
    assert any(line.startswith("not ranked: efficientnetb9: Unknown backbone 'efficientnetb9'. Did you mean") for line in lines)
    assert f"recommended:    {informative} (best by LogME: LogME " in result.output
    # the command keeps every setting rank was given (it dropped --image-size and --set)
    assert (f"train it:       tlkeras train --data {colour_folder} --image-size 32 --set stage1.epochs=15 "
            f"--set stage1.learning_rate=0.05 --backbone {informative}\n") in result.output
    assert json.loads((out / "ranking.json").read_text())[0]["ranked_by"] == "logme"


def test_cli_rank_without_the_probe_sorts_by_logme(tmp_path, candidates, colour_folder):
    informative, constant = candidates
    result = CliRunner().invoke(cli.main, ["rank", "--data", colour_folder, "--backbones", f"{constant},{informative}",
                                           "--image-size", "32", "--no-probe", "--output-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "ranking.json").read_text())
    assert [e["backbone"] for e in saved] == [informative, constant]
    assert [e["probe_accuracy"] for e in saved] == [None, None] and saved[0]["ranked_by"] == "logme"
    assert "seconds_probe" not in saved[0]


def test_cli_rank_errors_are_one_line(tmp_path, candidates):
    result = CliRunner().invoke(cli.main, ["rank", "--data", str(tmp_path / "nope"), "--backbones", "mobilenetv2"])
    assert result.exit_code == 1 and result.output.strip().splitlines() == [
        f"Error: data: the path '{tmp_path / 'nope'}' does not exist."]
    folder = write_image_folder(tmp_path / "few", per_class=4)
    result = CliRunner().invoke(cli.main, ["rank", "--data", folder, "--backbones", "nosuchnet,otherbad",
                                           "--output-dir", str(tmp_path / "r")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == "Error: no candidate could be ranked; see the reasons above."
    assert "not ranked: nosuchnet: Unknown backbone" in result.output and "not ranked: otherbad: Unknown backbone" in result.output


# === backbone: auto ===


def test_train_with_auto_backbone_trains_the_winner_and_records_the_ranking(tmp_path, candidates, colour_folder):
    informative, constant = candidates
    out = tmp_path / "run"
    result = CliRunner().invoke(cli.main, [
        "train", "--data", colour_folder, "--backbone", f"auto:{constant},{informative}", "--image-size", "32",
        "--output-dir", str(out), "--no-export", "--set", "stage1.epochs=15", "--set", "stage1.learning_rate=0.05",
        "--set", "stage2.epochs=0", "--set", "tensorboard=false"])
    assert result.exit_code == 0, result.output
    assert FinetuneConfig.from_yaml(out / "config.yaml").backbone == informative  # what resume compares
    record = json.loads((out / "run.json").read_text())
    assert [e["backbone"] for e in record["ranking"]] == [informative, constant]
    assert json.loads((out / "ranking.json").read_text()) == record["ranking"]
    assert "Backbone ranking (ranking.json)" in (out / "report.html").read_text()
    assert json.loads((out / "metrics.json").read_text())["accuracy"] >= 0.85


def test_auto_uses_the_ranking_already_in_output_dir(tmp_path, monkeypatch):
    """Started again after a kill, an auto run does not rank again: it trains the backbone it chose."""
    Ranking([{"backbone": "resnet50", "logme": -0.2, "probe_accuracy": 0.8, "seconds": 1.0},
             {"backbone": "mobilenetv2", "logme": -0.6, "probe_accuracy": 0.9, "seconds": 1.0}],
            by="logme").write(str(tmp_path))  # by LogME: resnet50, though the default would pick mobilenetv2

    def no_ranking(*args, **kwargs):
        raise AssertionError("ranked again")

    monkeypatch.setattr("tlkeras.ranking.rank.rank_backbones", no_ranking)
    cfg = FinetuneConfig().merged({"backbone": ["mobilenetv2", "resnet50"], "output_dir": str(tmp_path)})
    chosen, ranking = choose_backbone(cfg)
    assert chosen.backbone == "resnet50" and ranking.recommended["backbone"] == "resnet50"


def test_auto_is_refused_on_a_cluster(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker",
                                                                                                "index": 0}}))
    with pytest.raises(TlkerasError, match="Rank first with `tlkeras rank"):
        choose_backbone(FinetuneConfig().merged({"backbone": "auto:mobilenetv2,resnet50"}))


def test_rank_backbones_ranks_text_encoders(text_csv, hub_text_module, bert_preset):
    """Texts go the same way: a hub text-embedding module and a KerasHub BERT (its tokenizer inside), one frozen
    pass each. The module's word vectors carry the warm/cool words; so, with the text encoders' default pooling (the
    mean over tokens), does the randomly initialised tiny BERT: a mean of its distinct random word embeddings is a
    bag of words (its pooled output, a random tanh of the first token, carried nothing). Both probes learn the task
    and the ranking is in the order of its score (probe accuracy, ties by LogME)."""
    hub, bert = f"hub:{hub_text_module}", f"kerashub:{bert_preset}"
    result = rank_backbones(text_csv, [bert, hub], text_column="review", label_column="sentiment", batch_size=8,
                            stage1={"epochs": 15, "learning_rate": 0.05}, backbone_options={})
    dims = {e["backbone"]: e["feature_dims"] for e in result.entries}
    assert dims == {hub: 8, bert: 16} and not result.failed
    assert all(e["probe_accuracy"] >= 0.9 for e in result.entries), result.entries
    assert result.by == "probe"
    keys = [(e["probe_accuracy"], e["logme"]) for e in result.entries]
    assert keys == sorted(keys, reverse=True) and result.recommended == result.entries[0]
