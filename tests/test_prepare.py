"""scripts/prepare_data.py: the output layout contract, loaded back with fairseq."""

import gzip
import importlib.util
import json
from pathlib import Path

import pytest
from fairseq.data import Dictionary, data_utils
from fairseq.tasks.translation import load_langpair_dataset

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data" / "samples"
spec = importlib.util.spec_from_file_location("prepare_data", REPO / "scripts/prepare_data.py")
pd = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pd)

SPLITS = ("train", "valid", "test")


def first_lines(path, n):
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        return [next(lines).strip() for _ in range(n)]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The three tasks prepared from data/samples, once for the module."""
    root = tmp_path_factory.mktemp("bin")
    for name, argv in {
        "snli": ["--task", "snli"],
        "nmt": ["--task", "nmt", "--src", "fr", "--tgt", "en"],
        "summarization": ["--task", "summarization"],
    }.items():
        pd.main([*argv, "--raw", str(SAMPLES), "--dest", str(root / name)])
    return root


def load(prefix, dictionary):
    dataset = data_utils.load_indexed_dataset(str(prefix), dictionary, dataset_impl="mmap")
    assert dataset is not None, f"fairseq could not load {prefix}"
    return dataset


def check_translation_layout(dest, src, tgt, sizes):
    names = {p.name for p in dest.iterdir()}
    expected = {f"dict.{src}.txt", f"dict.{tgt}.txt", "meta.json", "text", "preprocess.log"}
    expected |= {
        f"{split}.{src}-{tgt}.{lang}.{ext}"
        for split in SPLITS
        for lang in (src, tgt)
        for ext in ("bin", "idx")
    }
    assert expected <= names
    dicts = {lang: Dictionary.load(str(dest / f"dict.{lang}.txt")) for lang in (src, tgt)}
    for split in SPLITS:
        # What fairseq's translation task does with --source-lang / --target-lang.
        pairs = load_langpair_dataset(
            str(dest), split, src, dicts[src], tgt, dicts[tgt], combine=False,
            dataset_impl="mmap", upsample_primary=1, left_pad_source=False,
            left_pad_target=False, max_source_positions=1024, max_target_positions=1024,
        )  # fmt: skip
        assert len(pairs) == sizes[split]
        assert pairs[0]["source"][-1] == dicts[src].eos()
        for lang in (src, tgt):
            if split != "train":  # text/ keeps the references of valid and test
                lines = (dest / "text" / f"{split}.{lang}").read_text().splitlines()
                assert len(lines) == sizes[split]
    return dicts


def test_nmt_layout_loads_in_fairseq_and_keeps_the_text(prepared):
    dest = prepared / "nmt"
    meta = json.loads((dest / "meta.json").read_text())
    assert meta["task"] == "nmt" and meta["vocab"] == "word"
    assert meta["langs"] == {"src": "fr", "tgt": "en"}
    assert meta["sizes"] == {"train": 3000, "valid": 300, "test": 300}
    assert meta["inputs"]["test.fr"]["file"] == "multi30k/tok/test_2016_flickr.lc.norm.tok.fr.gz"
    assert len(meta["inputs"]["train.en"]["sha256"]) == 64 and meta["created"]
    dicts = check_translation_layout(dest, "fr", "en", meta["sizes"])
    assert meta["dict_sizes"] == {lang: len(d) for lang, d in dicts.items()}
    # Token ids decode to the tokenized text of the input file, line by line.
    train = load(dest / "train.fr-en.fr", dicts["fr"])
    expected = first_lines(SAMPLES / "multi30k/tok/train.lc.norm.tok.fr.gz", 2)
    assert [dicts["fr"].string(train[i]) for i in range(2)] == expected
    valid = (dest / "text/valid.en").read_text().splitlines()
    assert valid[:2] == first_lines(SAMPLES / "multi30k/tok/val.lc.norm.tok.en.gz", 2)


def test_summarization_layout_maps_unk_and_selects_on_pairs_disjoint_from_test(prepared):
    dest = prepared / "summarization"
    meta = json.loads((dest / "meta.json").read_text())
    assert meta["langs"] == {"src": "article", "tgt": "title"}
    # No test set in the sample: the valid pairs are the test split, and validation is
    # the last tenth of the training file (at most 1000 pairs), not the test pairs.
    assert meta["sizes"] == {"train": 2700, "valid": 300, "test": 300}
    assert meta["test_is_valid"] and meta["test_name"] == "Gigaword valid-300 sample"
    dicts = check_translation_layout(dest, "article", "title", meta["sizes"])
    titles = first_lines(SAMPLES / "gigaword_sample/train.title.txt.gz", 3000)
    valid = (dest / "text/valid.title").read_text().splitlines()
    test = (dest / "text/test.title").read_text().splitlines()
    assert valid == [pd.clean(t) for t in titles[2700:]]
    assert test == [pd.clean(t) for t in first_lines(
        SAMPLES / "gigaword_sample/valid.title.filter.txt.gz", 300)]  # fmt: skip
    assert not set(valid) & set(test)
    train = load(dest / "train.article-title.title", dicts["title"])
    assert len(train) == 2700
    # The Rush et al. <unk> is fairseq's unk, not a word of the dictionary.
    articles = first_lines(SAMPLES / "gigaword_sample/train.article.txt.gz", 3000)
    line = next(i for i, text in enumerate(articles) if "<unk>" in text.split())
    assert line < 2700, "the sample's first <unk> article is no longer in train"
    ids = load(dest / "train.article-title.article", dicts["article"])[line]
    assert (ids == dicts["article"].unk()).sum() == articles[line].split().count("<unk>")
    assert "<unk>" not in (dest / "dict.article.txt").read_text().split()


def test_snli_layout_labels_and_shared_dictionary(prepared):
    dest = prepared / "snli"
    meta = json.loads((dest / "meta.json").read_text())
    # The samples hold 2000 / 500 / 500 pairs; those without a gold label are dropped.
    assert meta["sizes"] == {"train": 1999, "valid": 490, "test": 495}
    assert meta["labels"] == ["entailment", "neutral", "contradiction"]
    dictionary = Dictionary.load(str(dest / "dict.txt"))
    assert not list(dest.glob("dict.*.txt"))
    for split in SPLITS:
        labels = (dest / f"{split}.label").read_text().splitlines()
        assert len(labels) == meta["sizes"][split]
        assert set(labels) == {"entailment", "neutral", "contradiction"}
        for side in ("premise", "hypothesis"):
            assert len(load(dest / f"{split}.{side}", dictionary)) == meta["sizes"][split]
    first = json.loads(first_lines(SAMPLES / "snli/snli_1.0_train.jsonl.gz", 1)[0])
    hypothesis = load(dest / "train.hypothesis", dictionary)[0]
    assert dictionary.string(hypothesis) == pd.snli_tokenize(first["sentence2"])
    assert (dest / "train.label").read_text().splitlines()[0] == first["gold_label"]


def test_snli_dev_into_train_keeps_a_validation_slice_and_the_test(tmp_path):
    dest = tmp_path / "snli_dev"
    pd.main(
        ["--task", "snli", "--raw", str(SAMPLES), "--dest", str(dest), "--dev-into-train", "90"]
    )  # noqa: E501
    meta = json.loads((dest / "meta.json").read_text())
    # 1999 train pairs plus the 490 - 90 dev pairs after the first 90; test untouched.
    assert meta["sizes"] == {"train": 2399, "valid": 90, "test": 495}
    assert meta["settings"]["dev_into_train"] == 90
    assert len((dest / "train.label").read_text().splitlines()) == 2399
    assert len((dest / "valid.label").read_text().splitlines()) == 90


def test_resplit_options_are_checked(tmp_path, capsys):
    with pytest.raises(SystemExit):
        pd.main(["--task", "nmt", "--raw", str(SAMPLES), "--dev-into-train", "5"])
    assert "--dev-into-train applies to --task snli only" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--dev-into-train 5000: must keep between 1 and 489"):
        pd.main(["--task", "snli", "--raw", str(SAMPLES), "--dest", str(tmp_path / "a"),
                 "--dev-into-train", "5000"])  # fmt: skip


def test_snli_tokenizer():
    assert pd.snli_tokenize("A man's dog, running\tfast!") == "a man ' s dog , running fast !"


def test_same_settings_is_a_no_op_and_other_settings_are_refused(prepared, capsys):
    dest = prepared / "nmt"
    before = (dest / "meta.json").stat().st_mtime_ns
    pd.main(["--task", "nmt", "--raw", str(SAMPLES), "--dest", str(dest)])
    assert "already prepared" in capsys.readouterr().out
    assert (dest / "meta.json").stat().st_mtime_ns == before
    with pytest.raises(SystemExit) as error:
        pd.main(["--task", "nmt", "--raw", str(SAMPLES), "--dest", str(dest), "--max-vocab", "9"])
    message = str(error.value)
    assert "different settings" in message and "max_vocab 50000 there, 9 now" in message
    assert "--force" in message and "--dest" in message
    assert (dest / "meta.json").stat().st_mtime_ns == before
    # No temporary directory is left beside the prepared ones.
    assert sorted(p.name for p in prepared.iterdir()) == ["nmt", "snli", "summarization"]


def write_gz(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as out:
        out.writelines(line + "\n" for line in lines)


@pytest.fixture
def tiny_gigaword(tmp_path):
    """A raw directory with a full-data style Gigaword folder, test set included."""
    raw = tmp_path / "raw"
    articles = ["the cat sat on the mat", "UNK ate # fish", "a dog <unk> barked"]
    titles = ["cat sat", "UNK ate", "dog barked"]
    for split in ("train.{}.txt", "valid.{}.filter.txt", "test.{}.txt"):
        write_gz(raw / "gigaword" / (split.format("article") + ".gz"), articles)
        write_gz(raw / "gigaword" / (split.format("title") + ".gz"), titles)
    return raw


def test_a_real_test_set_is_used_and_max_vocab_caps_the_dictionary(tiny_gigaword, tmp_path):
    dest = tmp_path / "out"
    argv = ["--task", "summarization", "--raw", str(tiny_gigaword), "--dest", str(dest)]
    pd.main([*argv, "--max-vocab", "3"])
    meta = json.loads((dest / "meta.json").read_text())
    assert meta["test_is_valid"] is False and "test_name" not in meta
    assert meta["inputs"]["test.title"]["file"] == "gigaword/test.title.txt.gz"
    # 4 special symbols + the 3 most frequent words, padded to a multiple of 8.
    words = (dest / "dict.article.txt").read_text().split()[::2]
    assert len(words) == 3 + 1 and words[-1].startswith("madeupword")
    # --force replaces a preparation made with other settings.
    pd.main([*argv, "--force"])
    assert json.loads((dest / "meta.json").read_text())["settings"]["max_vocab"] == 50000


def test_failures_leave_no_half_prepared_dest(tiny_gigaword, tmp_path):
    write_gz(tiny_gigaword / "gigaword/valid.title.filter.txt.gz", ["one line only"])
    dest = tmp_path / "out"
    with pytest.raises(SystemExit, match="not line-aligned"):
        pd.main(["--task", "summarization", "--raw", str(tiny_gigaword), "--dest", str(dest)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_dest_without_meta_json_is_refused_and_missing_inputs_are_named(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="has no meta.json"):
        pd.main(["--task", "nmt", "--raw", str(SAMPLES), "--dest", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match=r"multi30k/tok has no train\.lc\.norm\.tok\.de"):
        pd.main(["--task", "nmt", "--src", "de", "--raw", str(SAMPLES), "--dest", str(tmp_path)])


def test_bad_arguments_are_clear_errors(capsys):
    for argv, expected in [
        (["--task", "snli", "--src", "fr"], "--src/--tgt apply to --task nmt only"),
        (["--task", "nmt", "--src", "en", "--tgt", "en"], "--src and --tgt must differ"),
        (["--task", "nmt", "--workers", "0"], "--workers must be >= 1"),
        (["--task", "nmt", "--raw", "/nonexistent"], "--raw directory not found"),
    ]:
        with pytest.raises(SystemExit):
            pd.main(argv)
        assert expected in capsys.readouterr().err


def test_spm_vocabulary(tmp_path):
    import sentencepiece

    dest = tmp_path / "spm"
    pd.main(
        ["--task", "summarization", "--raw", str(SAMPLES), "--dest", str(dest)]
        + ["--vocab", "spm", "--spm-vocab-size", "1000"]
    )
    meta = json.loads((dest / "meta.json").read_text())
    assert meta["vocab"] == "spm" and meta["spm_model"] == "spm.model"
    assert meta["settings"]["spm_vocab_size"] == 1000
    # One vocabulary of pieces for both sides.
    assert (dest / "dict.article.txt").read_text() == (dest / "dict.title.txt").read_text()
    dicts = check_translation_layout(dest, "article", "title", meta["sizes"])
    processor = sentencepiece.SentencePieceProcessor(model_file=str(dest / "spm.model"))
    titles = first_lines(SAMPLES / "gigaword_sample/train.title.txt.gz", 3000)
    ids = load(dest / "train.article-title.title", dicts["title"])
    plain = next(i for i, title in enumerate(titles) if "<unk>" not in title)
    pieces = dicts["title"].string(ids[plain]).split()
    assert processor.decode_pieces(pieces) == titles[plain]
    # <unk> stays fairseq's unk instead of being spelled out in pieces.
    unk = next(i for i, title in enumerate(titles) if "<unk>" in title.split())
    assert (ids[unk] == dicts["title"].unk()).sum() == titles[unk].split().count("<unk>")
    # text/ keeps the word-level references.
    test = (dest / "text/test.title").read_text().splitlines()
    assert test[:3] == first_lines(SAMPLES / "gigaword_sample/valid.title.filter.txt.gz", 3)
