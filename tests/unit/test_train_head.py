"""`train-head`: labelled-file reading, the leak-free split, and a head trained on real MiniLM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.cli import build_parser
from app.engine.manifest import ModelManifest
from app.engine.models.heads import ClassifierHead
from app.export.head_fit import HeadConfig, fit_head
from app.export.labelled_data import held_out_split, read_labelled
from app.export.train_head import FeatureExtractor, accuracy
from tests.conftest import MODELS_DIR

POSITIVE = [
    "I loved this film, it was wonderful from start to finish.",
    "An absolute delight: warm, funny and beautifully acted.",
    "The best meal I have had in years, simply fantastic.",
    "What a great experience, I would happily do it again.",
    "The staff were kind and helpful and the room was lovely.",
    "A brilliant, moving story that left me smiling.",
    "Superb performances and a gorgeous soundtrack.",
    "I am so happy with this purchase, it works perfectly.",
    "Charming, clever and a joy to watch.",
    "Excellent service and a truly pleasant evening.",
    "This book is a masterpiece, I enjoyed every page.",
    "Fantastic value, great quality, highly recommended.",
    "A beautiful day out with wonderful people.",
    "The concert was amazing and the crowd was thrilled.",
    "Everything about it was perfect and lovely.",
    "An inspiring, uplifting and heartfelt film.",
    "I adore this little cafe, the coffee is terrific.",
    "Great fun for the whole family, we loved it.",
    "Outstanding work, the team did a marvellous job.",
    "A delightful surprise, far better than I hoped.",
]
NEGATIVE = [
    "I hated this film, it was awful from start to finish.",
    "A dull, tedious and badly acted mess.",
    "The worst meal I have had in years, simply disgusting.",
    "What a terrible experience, I will never go back.",
    "The staff were rude and the room was filthy.",
    "A boring, pointless story that made me angry.",
    "Wooden performances and an irritating soundtrack.",
    "I am so disappointed with this purchase, it broke at once.",
    "Clumsy, stupid and painful to watch.",
    "Horrible service and a miserable evening.",
    "This book is garbage, I regret every page.",
    "Poor value, cheap quality, avoid it.",
    "A wretched day out with unpleasant people.",
    "The concert was dreadful and the crowd was furious.",
    "Everything about it was wrong and ugly.",
    "A depressing, lifeless and cynical film.",
    "I despise this grimy cafe, the coffee is foul.",
    "Awful for the whole family, we hated it.",
    "Shoddy work, the team did an appalling job.",
    "A nasty disappointment, far worse than I feared.",
]
LABELS = ["negative", "positive"]


def _write_rows(path: Path, rows: list[tuple[str, str]], delimiter: str, header: str) -> Path:
    lines = [header] + [f"{label}{delimiter}{text}" for label, text in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_reads_tsv_with_label_indices(tmp_path: Path) -> None:
    rows = [("1", 'a "quoted" joy'), ("0", "a sad, sad day")]
    data = read_labelled(_write_rows(tmp_path / "d.tsv", rows, "\t", "label\tsentence"), LABELS)
    assert data.texts == ['a "quoted" joy', "a sad, sad day"]
    assert data.labels.tolist() == [1, 0]


def test_reads_csv_with_label_names_and_quoted_commas(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('text,label\n"good, really good",positive\nbad,negative\n', encoding="utf-8")
    data = read_labelled(path, LABELS)
    assert data.texts == ["good, really good", "bad"]
    assert data.labels.tolist() == [1, 0]


def test_sniffs_the_delimiter_of_other_extensions(tmp_path: Path) -> None:
    rows = [("positive", "nice"), ("negative", "nasty"), ("positive", "fine")]
    data = read_labelled(_write_rows(tmp_path / "d.txt", rows, "\t", "label\tcontent"), LABELS)
    assert data.labels.tolist() == [1, 0, 1]


@pytest.mark.parametrize("label", ["neutral", "2", "-1"])
def test_unknown_label_is_a_clear_error(tmp_path: Path, label: str) -> None:
    path = _write_rows(tmp_path / "d.tsv", [("1", "ok"), (label, "meh")], "\t", "label\ttext")
    with pytest.raises(ValueError, match=rf"d\.tsv:3: label '{label}' is neither one of"):
        read_labelled(path, LABELS)


def test_missing_text_column_is_a_clear_error(tmp_path: Path) -> None:
    path = _write_rows(tmp_path / "d.tsv", [("1", "ok")], "\t", "label\treview")
    with pytest.raises(ValueError, match="no column named sentence or content or text"):
        read_labelled(path, LABELS)


def test_phrase_data_holds_out_whole_sentences_and_drops_their_phrases() -> None:
    sentences = [f"movie {i} was {'good' if i % 2 else 'bad'} and {i} long" for i in range(40)]
    texts: list[str] = []
    for sentence in sentences:  # every sentence with two of its sub-phrases, SST style
        words = sentence.split()
        texts += [sentence, " ".join(words[:2]), " ".join(words[-2:])]
    labels = np.asarray([i % 2 for i in range(40) for _ in range(3)])
    train, held = held_out_split(texts, labels, 0.1, seed=0)
    assert len(held) == 4 and {texts[i] for i in held} <= set(sentences)
    held_sentences = [texts[i] for i in held]
    for row in train:
        assert not any(f" {texts[row]} " in f" {sentence} " for sentence in held_sentences)
    assert len(train) == len(texts) - 3 * len(held)


def test_plain_data_is_split_stratified_without_duplicates_leaking() -> None:
    texts = [f"text number {i}" for i in range(50)] + ["text number 3"]
    labels = np.asarray([i % 2 for i in range(50)] + [1])
    train, held = held_out_split(texts, labels, 0.2, seed=1)
    assert sorted(labels[held].tolist()) == [0] * 5 + [1] * 5
    held_texts = {texts[i] for i in held}
    assert not held_texts & {texts[i] for i in train}
    assert len(train) + len(held) + ("text number 3" in held_texts) == len(texts)


def test_head_round_trips_through_its_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    head = ClassifierHead(
        (rng.normal(size=(8, 5)).astype(np.float32), rng.normal(size=(5, 3)).astype(np.float32)),
        (rng.normal(size=5).astype(np.float32), rng.normal(size=3).astype(np.float32)),
    )
    head.save(tmp_path / "head.npz")
    loaded = ClassifierHead.load(tmp_path / "head.npz")
    features = rng.normal(size=(4, 8)).astype(np.float32)
    np.testing.assert_array_equal(loaded.logits(features), head.logits(features))


@pytest.mark.parametrize("hidden", [0, 6])
def test_head_folds_standardization_into_its_first_layer(hidden: int) -> None:
    """The PyTorch network on standardized features and the served head on raw ones agree."""
    import torch

    from app.export.head_fit import _as_head, head_network

    rng = np.random.default_rng(3)
    features = rng.normal(2.0, 3.0, size=(9, 5)).astype(np.float32)
    mean, scale = features.mean(axis=0), features.std(axis=0) + 1e-6
    network = head_network(5, 3, HeadConfig(hidden=hidden)).eval()
    with torch.no_grad():
        expected = network(torch.from_numpy((features - mean) / scale)).numpy()
    head = _as_head(network, mean.astype(np.float64), scale.astype(np.float64))
    np.testing.assert_allclose(head.logits(features), expected, atol=1e-4)


def test_head_training_is_deterministic_for_a_seed() -> None:
    rng = np.random.default_rng(1)
    features = rng.normal(size=(60, 6)).astype(np.float32)
    labels = (features[:, 0] > 0).astype(np.int64)
    config = HeadConfig(hidden=8, epochs=2, seed=4)
    first, second = (fit_head(features, labels, 2, config).head for _ in range(2))
    for a, b in zip(first.weights + first.biases, second.weights + second.biases, strict=True):
        np.testing.assert_array_equal(a, b)


def test_fitted_head_separates_two_clusters_and_averages_members() -> None:
    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(-1, 0.5, (40, 4)), rng.normal(1, 0.5, (40, 4))])
    labels = np.repeat([0, 1], 40)
    head = fit_head(features, labels, 2, HeadConfig(hidden=8, members=3, epochs=5)).head
    assert [w.shape for w in head.weights] == [(4, 24), (24, 2)]
    assert accuracy(head, features, labels) == 1.0


def _noisy_problem() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """40 training and 40 validation rows of one noisy direction, 8 training labels
    flipped: a wide head at a high learning rate memorizes them and validation accuracy
    rises, then falls (seed 2: best at epoch 5 of 60)."""
    rng = np.random.default_rng(2)

    def rows(n: int) -> tuple[np.ndarray, np.ndarray]:
        features = rng.normal(size=(n, 8)).astype(np.float32)
        return features, (features[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(np.int64)

    (features, labels), (held, held_labels) = rows(40), rows(40)
    labels[:8] = 1 - labels[:8]
    return features, labels, held, held_labels


OVERFITTING = HeadConfig(
    hidden=64, epochs=2, learning_rate=3e-2, batch_size=8, input_dropout=0.0, dropout=0.0,
    weight_decay=0.0,
)  # fmt: skip


def test_fit_head_keeps_the_weights_of_the_best_validation_epoch() -> None:
    features, labels, held, held_labels = _noisy_problem()
    scores: list[float | None] = []

    def record(member: int, epoch: int, epochs: int, score: float | None) -> None:
        scores.append(score)

    fit = fit_head(features, labels, 2, OVERFITTING, record, validation=(held, held_labels))
    # 2 epochs of 5 updates are fewer than MIN_STEPS: it ran 60, and says so.
    assert fit.epochs == len(scores) == 60
    best = max(s for s in scores if s is not None)
    assert scores[-1] is not None and scores[-1] < best  # the last epoch is not the best here
    assert fit.kept_epochs == (scores.index(best) + 1,)  # the first of the best
    assert fit.kept_accuracies == (best,)
    assert accuracy(fit.head, held, held_labels) == best  # those weights, not the last


def test_fit_head_without_validation_keeps_the_last_weights() -> None:
    features, labels, held, held_labels = _noisy_problem()
    scores: list[float | None] = []

    def record(member: int, epoch: int, epochs: int, score: float | None) -> None:
        scores.append(score)

    empty = (held[:0], held_labels[:0])
    for validation in (None, empty):
        fit = fit_head(features, labels, 2, OVERFITTING, record, validation=validation)
        assert (fit.kept_epochs, fit.kept_accuracies) == ((60,), (None,))
    assert set(scores) == {None}
    last = fit_head(features, labels, 2, OVERFITTING, validation=(held, held_labels))
    assert accuracy(fit.head, held, held_labels) < accuracy(last.head, held, held_labels)


def test_describe_reports_the_epochs_that_ran() -> None:
    assert "4 epochs" in HeadConfig().describe()
    assert "150 epochs" in HeadConfig().describe(150)


@pytest.fixture(scope="module")
def minilm_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (MODELS_DIR / "minilm" / "model.onnx").exists():
        pytest.skip("models/minilm is not built (run `make models`)")
    repository = tmp_path_factory.mktemp("models")
    (repository / "minilm").symlink_to(MODELS_DIR / "minilm", target_is_directory=True)
    return repository


def test_train_head_separates_a_small_labelled_set(
    minilm_repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [("positive", text) for text in POSITIVE] + [("negative", text) for text in NEGATIVE]
    data = _write_rows(tmp_path / "train.tsv", rows, "\t", "label\ttext")
    argv = ["train-head", "--base", "minilm", "--data", str(data), "--name", "mood"]
    argv += ["--labels", "negative,positive", "--eval", str(data)]
    argv += ["--models-dir", str(minilm_repository), "--hidden", "64", "--epochs", "4"]
    args = build_parser().parse_args(argv)
    assert args.handler(args) == 0
    # A tiny set gets more epochs than asked: the output says so rather than "epoch 300/300".
    shown = capsys.readouterr().err
    assert "4 epochs of" in shown and "updates: training" in shown

    directory = minilm_repository / "mood"
    assert sorted(path.name for path in directory.iterdir()) == ["head.npz", "model.json"]
    manifest = ModelManifest.read(directory)
    base = ModelManifest.read(minilm_repository / "minilm")
    assert (manifest.task, manifest.base, manifest.head) == ("classification", "minilm", "head.npz")
    assert manifest.labels == LABELS and manifest.files == {}
    assert (manifest.pooling, manifest.dimensions, manifest.max_length) == (
        base.pooling,
        base.dimensions,
        base.max_length,
    )
    scores = manifest.evaluation
    assert scores["train_examples"] + scores["validation"]["examples"] == len(rows)
    # The eval file here is the training file itself. The weights kept are those of the
    # first epoch with the best accuracy on the 4 held-out rows, an early one, not the
    # last epoch's (which memorized the training rows: 0.95 and more before that rule).
    assert scores["test"]["accuracy"] >= 0.85
    (history,) = scores["training"]["held_out_accuracy_by_epoch"]
    (kept,) = scores["training"]["kept_epochs"]
    assert history[kept - 1] == max(history) == scores["validation"]["accuracy"]
    assert scores["command"].startswith("encoder-serve train-head --base minilm --data ")
    assert "--hidden 64" in scores["command"]

    head = ClassifierHead.load(directory / "head.npz")
    extractor = FeatureExtractor(minilm_repository / "minilm", threads=1)
    texts = [text for _, text in rows]
    labels = np.asarray([LABELS.index(label) for label, _ in rows])
    assert accuracy(head, extractor.embed(texts), labels) >= 0.85
    unseen = ["A wonderful, joyful and lovely show.", "A horrible, boring and awful show."]
    assert head.logits(extractor.embed(unseen)).argmax(axis=1).tolist() == [1, 0]


def test_cli_reports_bad_input_without_a_traceback(
    minilm_repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _write_rows(tmp_path / "d.tsv", [("1", "ok"), ("maybe", "meh")], "\t", "label\ttext")
    common = ["--data", str(data), "--name", "x", "--labels", "negative,positive"]
    common += ["--models-dir", str(minilm_repository)]
    for base, message in [("nope", "no base model 'nope'"), ("minilm", "label 'maybe'")]:
        args = build_parser().parse_args(["train-head", "--base", base, *common])
        assert args.handler(args) == 2
        assert message in capsys.readouterr().err
    assert not (minilm_repository / "x").exists()


def test_finetune_help_says_which_method_to_try_first(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["finetune", "--help"])
    shown = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "with a few hundred rows try --method head first" in shown
    assert "from a few thousand rows use lora" in shown
