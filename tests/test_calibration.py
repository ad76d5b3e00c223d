"""Calibration batches: samplers, seeds, padding, sources and clear errors."""

from __future__ import annotations

import json

import pytest

from hf_streamline import StreamlineError, build_calibration
from hf_streamline.calibration import CalibrationConfig, load_documents, parse_dataset_spec


@pytest.fixture(scope="module")
def tok(stories_model):
    return stories_model[1]


def test_contiguous_windows_are_seeded_and_non_overlapping(tok, data_dir):
    src = str(data_dir / "text" / "stories260k_samples.txt")
    a = build_calibration(tok, src, CalibrationConfig(n_samples=8, seq_len=32, seed=1))
    b = build_calibration(tok, src, CalibrationConfig(n_samples=8, seq_len=32, seed=1))
    c = build_calibration(tok, src, CalibrationConfig(n_samples=8, seq_len=32, seed=2))
    assert a.input_ids.shape == (8, 32) and a.attention_mask.all()
    assert (a.input_ids == b.input_ids).all() and not (a.input_ids == c.input_ids).all()
    rows = {tuple(r.tolist()) for r in a.input_ids}
    assert len(rows) == 8
    assert a.recipe()["num_tokens"] == 8 * 32


def test_random_sampler_draws_windows_inside_long_documents(tok):
    docs = ["one two three " * 40, "short text"]
    cal = build_calibration(tok, docs, CalibrationConfig(n_samples=5, seq_len=16, sampler="random", seed=0))
    long_ids = tok(docs[0], add_special_tokens=False).input_ids
    joined = " ".join(map(str, long_ids))
    for row in cal.input_ids.tolist():
        assert " ".join(map(str, row)) in joined  # a window of the long document, never of the short one


def test_random_sampler_too_short_names_lengths(tok):
    with pytest.raises(StreamlineError, match=r"at least seq_len=64 tokens; the longest of 2 has \d+ tokens"):
        build_calibration(tok, ["tiny", "also tiny"], CalibrationConfig(n_samples=2, seq_len=64, sampler="random"))


def test_contiguous_too_short_says_found_and_needed(tok):
    with pytest.raises(StreamlineError, match=r"need 6400 tokens, found \d+"):
        build_calibration(tok, ["Once upon a time there was a cat."], CalibrationConfig(n_samples=100, seq_len=64))


def test_padded_sampler_masks_padding(tok):
    docs = ["Once upon a time", "The dog ran to the park and played with a red ball all day long"]
    cal = build_calibration(tok, docs, CalibrationConfig(n_samples=2, seq_len=12, sampler="padded"))
    lengths = cal.attention_mask.sum(1).tolist()
    assert sorted(lengths) == sorted([min(12, len(tok(d, add_special_tokens=False).input_ids)) for d in docs])
    assert min(lengths) < 12  # the short one is padded
    row = lengths.index(min(lengths))
    assert (cal.input_ids[row, min(lengths):] == tok.pad_token_id).all()


def test_jsonl_and_dataset_sources(tok, tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"body": f"Story number {i}. " * 20}) for i in range(5)))
    docs = load_documents(str(path), text_column="body")
    assert len(docs) == 5
    ds_docs = load_documents(f"dataset:{path}::train:body")
    assert ds_docs == docs
    with pytest.raises(StreamlineError, match="no column 'text'"):
        load_documents(f"dataset:{path}:train")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"other": 1}\n')
    with pytest.raises(StreamlineError, match=r"bad.jsonl:2: expected an object with a string field 'text'"):
        load_documents(str(bad))


def test_dataset_spec_parsing():
    assert parse_dataset_spec("dataset:wikitext:wikitext-2-raw-v1:train") == {
        "name": "wikitext", "config": "wikitext-2-raw-v1", "split": "train", "column": None}
    assert parse_dataset_spec("dataset:allenai/c4:train")["split"] == "train"
    assert parse_dataset_spec("dataset:x:cfg:validation:content")["column"] == "content"
    with pytest.raises(StreamlineError, match="expected dataset:NAME:SPLIT"):
        parse_dataset_spec("dataset:onlyname")


def test_missing_file_and_unknown_sampler(tok):
    with pytest.raises(StreamlineError, match="no such file"):
        build_calibration(tok, "/nonexistent/file.txt")
    with pytest.raises(StreamlineError, match="sampler 'weird' is unknown"):
        build_calibration(tok, ["a"], CalibrationConfig(sampler="weird"))


def test_bad_json_lines_name_the_file_and_line_everywhere(tmp_path):
    """Calibration text, healing data and task files share one JSON-lines reader: a bad line is named."""
    from hf_streamline.healing.data import _read_records

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n\n{"text": broken}\n', encoding="utf-8")
    with pytest.raises(StreamlineError, match=r"bad.jsonl, line 3: not valid JSON"):
        load_documents(str(bad))
    with pytest.raises(StreamlineError, match=r"^config.source: .*bad.jsonl, line 3: not valid JSON"):
        _read_records(str(bad))
    good = tmp_path / "good.jsonl"
    good.write_text('{"text": "a"}\n\n{"text": "b"}\n', encoding="utf-8")
    assert load_documents(str(good)) == ["a", "b"] and _read_records(str(good)) == [{"text": "a"}, {"text": "b"}]
