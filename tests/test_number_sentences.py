"""The offline translation sentences: num2words' forms in each language, German word order,
splits disjoint by template and by number, determinism, the target-language token."""

import pytest
from num2words import num2words

from data import number_sentences as ns
from data import translation as tr
from experiments.configs import transformer as configs

TARGETS = ("fr", "de", "es", "it")


@pytest.fixture(scope="module")
def splits():
    return {split: ns.sentences(split, n, 3, "en", TARGETS)
            for split, n in (("train", 1500), ("val", 150), ("test", 150))}


def test_a_sentence_in_each_language_with_num2words_forms():
    opener, clause = ns.OPENERS[2], ns.CLAUSES[0]     # "In {y}, " + "{n} passengers ..."
    values = [{"y": 1987}, {"n": 212}]
    assert ns.render("en", opener, [clause], [], values) == (
        "In nineteen eighty-seven, two hundred and twelve passengers boarded the train.")
    assert ns.render("fr", opener, [clause], [], values) == (
        "En mille neuf cent quatre-vingt-sept, deux cent douze passagers sont montés dans le "
        "train.")
    assert ns.render("it", opener, [clause], [], values) == (
        "Nel millenovecentottantasette, duecentododici passeggeri sono saliti sul treno.")
    assert ns.render("it", ns.OPENERS[0], [ns.CLAUSES[8]], [], [{}, {"o": 8}]) == (
        "L'ottavo corridore ha tagliato il traguardo.")          # il elided before a vowel
    # German: the verb before the subject after an opener, last after "weil"
    assert ns.render("de", opener, [clause], [], values) == (
        "Im Jahr neunzehnhundertsiebenundachtzig stiegen zweihundertzwölf Fahrgäste in den Zug.")
    two = ns.render("de", ns.OPENERS[0], [ns.CLAUSES[13], clause], [ns.CONNECTORS[2]],
                    [{}, {"y": 1851}, {"n": 21}])
    assert two == ("Die Brücke wurde im Jahr achtzehnhunderteinundfünfzig gebaut, weil "
                   "einundzwanzig Fahrgäste in den Zug stiegen.")
    # Spanish and German shorten a final "one" before a noun; ordinals agree
    assert [ns.cardinal(n, "es") for n in (21, 101, 31)] == ["veintiún", "ciento un",
                                                              "treinta y un"]
    assert ns.cardinal(101, "de") == "einhundertein"
    assert ns.ordinal(23, "es") == "vigésimo tercer" and ns.ordinal(3, "de", True) == "dritten"
    assert ns.money(45, 20, "EUR", "de") == num2words(45.2, lang="de", to="currency")


def test_drawn_sentences_use_num2words_for_their_numbers(splits):
    def has(words, text):          # a number may open the sentence, capitalised
        return words.lower() in text.lower()

    for s in splits["train"][:200]:
        assert s.src.startswith(f"<2{s.lang}> ") and s.lang in TARGETS
        for y in s.numbers.get("y", []):
            assert has(num2words(y, lang="en", to="year"), s.src)
            assert has(num2words(y, lang=s.lang, to="year"), s.tgt)
        for o in s.numbers.get("o", []):
            assert has(num2words(o, lang="en", to="ordinal"), s.src)
            if s.lang != "es":            # Spanish drops the -o of (...)primero / tercero
                assert has(num2words(o, lang=s.lang, to="ordinal"), s.tgt)
        for n in s.numbers.get("n", []):  # counts and the whole units of amounts
            assert has(num2words(n, lang="en"), s.src)
            if s.lang == "fr":
                assert has(num2words(n, lang="fr"), s.tgt)
        assert s.tgt[0].isupper() and s.tgt.endswith(".")
    assert {s.lang for s in splits["train"]} == set(TARGETS)


def test_splits_are_disjoint_by_template_and_by_number(splits):
    templates = {k: {s.template for s in v} for k, v in splits.items()}
    numbers = {k: {(kind, x) for s in v for kind, xs in s.numbers.items() for x in xs}
               for k, v in splits.items()}
    for held_out in ("val", "test"):
        assert not templates[held_out] & templates["train"]
        assert not numbers[held_out] & numbers["train"]
    assert not templates["val"] & templates["test"] and not numbers["val"] & numbers["test"]
    # the held-out sets are real: every kind of template part and number occurs in test
    assert len(templates["test"]) > 100 and {k for k, _ in numbers["test"]} == {"n", "o", "y"}
    assert {s.template[0] for s in splits["test"]} == set(range(len(ns.OPENERS)))


def test_same_seed_same_pairs_other_seed_others():
    a = ns.sentences("test", 40, 5, "en", TARGETS)
    assert [(s.src, s.tgt) for s in a] == [(s.src, s.tgt) for s in
                                           ns.sentences("test", 40, 5, "en", TARGETS)]
    assert [s.src for s in a] != [s.src for s in ns.sentences("test", 40, 6, "en", TARGETS)]
    # German as the source: any of the four languages may be either side
    de = ns.sentences("val", 5, 5, "de", ("en",))
    assert all(s.src.startswith("<2en> ") for s in de)


def sentences_cfg(tmp_path, **overrides):
    d = configs.get_config("sentences").data
    d.update(train_size=300, val_size=20, test_size=20, vocab_size=700,
             cache_dir=str(tmp_path), **overrides)
    return d


def test_corpus_tokenizer_and_fraction(tmp_path):
    d = sentences_cfg(tmp_path)
    corpus = tr.load_corpus(d)
    assert {k: len(v) for k, v in corpus.items()} == {"val": 20, "test": 20, "train": 300}
    assert corpus["test"].src == tr.load_corpus(d)["test"].src         # cached, the same
    tok = tr.get_tokenizer(d, corpus["train"])
    for lang in TARGETS:                  # each target's token is one id, after <pad> <s> </s>
        ids = tok.encode(f"<2{lang}> Yesterday")
        assert ids[0] == tok.token_id(f"<2{lang}>") in (3, 4, 5, 6) and len(ids) > 1
    assert len(tr.take_fraction(corpus["train"], 0.125)) == 38
    with pytest.raises(ValueError, match="train_fraction must be in"):
        tr.take_fraction(corpus["train"], 0.0)


@pytest.mark.parametrize("overrides, message", [
    (dict(tgt_lang="fr,xx"), "not 'xx'"),
    (dict(tgt_lang="fr,en"), "data.src_lang 'en' is also in data.tgt_lang"),
    (dict(source="numbers", tgt_lang="fr,de"), "several target languages need"),
    (dict(clauses=0), "data.clauses must be between 1 and 24"),
])
def test_sentence_errors(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        tr.load_corpus(sentences_cfg(tmp_path, **overrides))
