"""GPT-3 data preparation presets: get_config("PRESET") for experiments/prepare_corpus.py.

    offline   GPT-3's Table 2.2 mixture with every dataset mapped onto text on this machine:
              Common Crawl -> text files inside the installed packages (READMEs, licences,
              metadata: a small, messy crawl, filtered by the quality classifier);
              WebText2 -> the standard library's docstrings and comments; Books1 -> its
              modules; Books2 -> its test modules; Wikipedia -> its module docstrings
    tiny      the same with 40 documents per dataset (seconds)

A source's corpus may instead be "jsonl:PATHS" (a "text" field per line) or "files:GLOBS", so
real crawls and curated sets plug in by command line, e.g.
--config.sources.common_crawl.corpus=jsonl:/data/cc/*.jsonl.
"""

import ml_collections

from experiments.configs.common import check_preset

# GPT-3 Table 2.2: weight in the training mix (the paper's percentages add up to 101).
TABLE_2_2 = {"common_crawl": 0.60, "webtext2": 0.22, "books1": 0.08, "books2": 0.08,
             "wikipedia": 0.03}
OFFLINE_CORPORA = {"common_crawl": "package_texts", "webtext2": "stdlib_docstrings",
                   "books1": "stdlib_modules", "books2": "stdlib_tests",
                   "wikipedia": "stdlib_module_docs"}


def source(weight: float, corpus: str, filter: bool = False, max_docs: int = 0):
    return ml_collections.ConfigDict(dict(weight=weight, corpus=corpus, filter=filter,
                                          max_docs=max_docs))


EXPERIMENT = "prepare_corpus"

PRESETS = ("offline", "tiny")


def get_config(arg: str = "offline") -> ml_collections.ConfigDict:
    check_preset(arg, PRESETS)
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.docs_per_shard = 1000
    max_docs = 40 if arg == "tiny" else 0
    # Only the crawl is filtered by the classifier (appendix A); the curated sets are not.
    config.sources = ml_collections.ConfigDict({
        name: source(weight, OFFLINE_CORPORA[name], filter=name == "common_crawl",
                     max_docs=max_docs) for name, weight in TABLE_2_2.items()})
    config.quality = ml_collections.ConfigDict(dict(
        reference="webtext2,wikipedia",  # positives; the paper: WebText, Wikipedia, books
        max_train_docs=2000,             # per class, drawn by reservoir sampling
        n_features=2 ** 18,              # hashed word 1..ngram-grams
        ngram=2,
        C=1.0,
        folds=2,                         # cross-fitting: no document scored by a model that
                                         # trained on it
        alpha=9.0,                       # keep iff np.random.pareto(alpha) > 1 - score
        batch=256))
    config.dedup = ml_collections.ConfigDict(dict(
        threshold=0.8,         # Jaccard similarity at which a document counts as a repeat
        num_perm=128,          # MinHash permutations (the paper: 10 hashes in Spark)
        shingle="word",        # word | char: the paper reused the classifier's word features
        shingle_size=5,
        across_sources=True))  # one index for all datasets: curated ones first, then the crawl
    config.mixture = ml_collections.ConfigDict(dict(
        unit="chars",          # chars (as the paper's tokens) or docs
        chunk_chars=8192,      # unit=chars: longer documents are mixed as pieces of at most
                               # this many characters (about one 2048-token window); 0 = whole
        total=0,               # > 0: the mixture's size in `unit`; 0: the largest in which no
        max_epochs=3.4))       # source repeats more than max_epochs times (GPT-3's Wikipedia)
    return config
