"""The detectors on the labelled corpus (tests/governor/corpus.py): precision at least
0.95 and recall at least 0.90 for every kind. bench/governor.py prints the figures."""

import pytest

from tests.governor.corpus import CORPUS, KINDS, evaluate

PRECISION = 0.95
RECALL = 0.90

SCORES = evaluate()


@pytest.mark.parametrize("kind", KINDS)
def test_precision_and_recall_reach_the_targets(kind):
    score = SCORES[kind]
    assert score.true_positives >= 5, f"too few {kind} samples to measure"
    assert score.precision >= PRECISION, score.false_alarms
    assert score.recall >= RECALL, score.misses


def test_the_corpus_covers_every_domain_and_has_clean_look_alikes():
    domains = {sample.domain for sample in CORPUS}
    assert domains == {"support", "hr", "legal", "developer"}
    clean = [sample for sample in CORPUS if not sample.labels]
    assert len(clean) >= 50
    texts = " ".join(sample.text for sample in clean)
    for look_alike in (
        "tracking number",
        "ISBN",
        "commit 9fceb02d",
        "123e4567-e89b",
        "sk-...",
        "Please ignore my previous message",
        "How do I write a good system prompt",
        "act as a tutor",
        "<div> element",
        "escape < in attributes",
        "v2.14.3",
        "2024-05-14T08:31:07",
        "ignore the shipping fee",
        "court disregarded the previous ruling",
        "previous version of the travel policy I sent",
        "enable developer mode",
    ):
        assert look_alike in texts


def test_a_detector_that_finds_nothing_scores_zero_recall():
    scores = evaluate(detector=lambda text: [])
    assert all(scores[kind].recall == 0 for kind in KINDS)
    assert all(scores[kind].precision == 1.0 for kind in KINDS)
