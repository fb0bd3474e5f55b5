"""GPT-3's training-data preparation (section 2.2, appendix A) as one streaming command.

    python -m experiments.prepare_corpus --config=experiments/configs/corpus.py:offline \
        --workdir=DIR [--config.dedup.threshold=0.7 ...]

1. A quality classifier is trained on reservoir samples of the reference datasets (positive)
   and of the datasets to filter (negative, the raw crawl).
2. Each dataset streams through the Pareto rule (filtered datasets only) and fuzzy
   deduplication (MinHash + LSH, one index across datasets, curated ones first so that the
   crawl's copies of them are the ones removed), into DIR/sources/NAME/shard-*.jsonl.
3. The mixture draws from those shards by Table 2.2's weights into DIR/corpus/shard-*.jsonl,
   no source repeating more than mixture.max_epochs times; a source too small to give its
   weight within that cap is named in one warning line and capped (corpus_prep.plan_mixture).

DIR/stats.json records documents in and out of every step, the near-duplicates found (within
and across datasets, with examples), the classifier's accuracy and keep rate per dataset, the
mixture's counts, shares and epochs, and the time each step took.
"""

import dataclasses
import heapq
import json
import os
import pathlib
import platform
import time

import numpy as np
from absl import logging

from data import corpus_prep
from experiments import launch


@dataclasses.dataclass
class SourceStats:
    docs_in: int = 0
    chars_in: int = 0
    scored: int = 0
    quality_kept: int = 0
    score_sum: float = 0.0
    kept_score_sum: float = 0.0
    exact_duplicates: int = 0
    near_duplicates: int = 0
    duplicates_of: dict = dataclasses.field(default_factory=dict)
    duplicate_examples: list = dataclasses.field(default_factory=list)
    top_scored: list = dataclasses.field(default_factory=list)
    bottom_scored: list = dataclasses.field(default_factory=list)
    docs_out: int = 0
    chars_out: int = 0
    longest_out: int = 0
    seconds: float = 0.0

    def on_scored(self, doc, score: float, kept: bool) -> None:
        self.scored += 1
        self.score_sum += score
        if kept:
            self.quality_kept += 1
            self.kept_score_sum += score
        # The 5 highest and lowest scores, for a reader to see what the classifier prefers.
        for heap, key in ((self.top_scored, score), (self.bottom_scored, -score)):
            item = (key, doc["id"], kept)
            (heapq.heappush if len(heap) < 5 else heapq.heappushpop)(heap, item)

    def on_duplicate(self, doc, kind: str, kept_id: str) -> None:
        if kind == "exact":
            self.exact_duplicates += 1
        else:
            self.near_duplicates += 1
        other = kept_id.split(":", 1)[0]
        self.duplicates_of[other] = self.duplicates_of.get(other, 0) + 1
        if len(self.duplicate_examples) < 10:
            self.duplicate_examples.append({"dropped": doc["id"], "kept": kept_id, "kind": kind})

    def report(self, name: str, filtered: bool) -> dict:
        out = {"docs_in": self.docs_in, "chars_in": self.chars_in}
        if filtered:
            out["quality"] = {
                "scored": self.scored, "kept": self.quality_kept,
                "keep_rate": self.quality_kept / max(self.scored, 1),
                "mean_score": self.score_sum / max(self.scored, 1),
                "mean_score_kept": self.kept_score_sum / max(self.quality_kept, 1),
                "highest": [{"id": i, "score": s, "kept": k}
                            for s, i, k in sorted(self.top_scored, reverse=True)],
                "lowest": [{"id": i, "score": -s, "kept": k}
                           for s, i, k in sorted(self.bottom_scored, reverse=True)]}
        within = self.duplicates_of.get(name, 0)
        out["dedup"] = {
            "exact_duplicates": self.exact_duplicates, "near_duplicates": self.near_duplicates,
            "within_source": within,
            "of_other_sources": {k: v for k, v in self.duplicates_of.items() if k != name},
            "examples": self.duplicate_examples}
        out.update(docs_out=self.docs_out, chars_out=self.chars_out,
                   seconds=round(self.seconds, 2))
        return out


def machine() -> dict:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count(), "python": platform.python_version()}


def check(config) -> None:
    names = list(config.sources)
    for name in names:
        if ":" in name:
            raise ValueError(f"source name {name!r} may not contain ':'")
    refs = [r.strip() for r in config.quality.reference.split(",") if r.strip()]
    if any(config.sources[n].filter for n in names):
        unknown = [r for r in refs if r not in config.sources]
        if unknown or not refs:
            raise ValueError(f"quality.reference {config.quality.reference!r} must name "
                             f"sources among {names}")
        if any(config.sources[r].filter for r in refs):
            raise ValueError("a reference dataset cannot itself be filtered by the classifier")
    if sum(config.sources[n].weight for n in names) <= 0:
        raise ValueError("the sources' weights add up to nothing")


def documents(config, name: str):
    src = config.sources[name]
    return corpus_prep.non_empty(corpus_prep.local_corpus(src.corpus, name), src.max_docs)


def train_classifier(config, rng) -> tuple[corpus_prep.QualityClassifier, dict]:
    q = config.quality
    refs = [r.strip() for r in q.reference.split(",") if r.strip()]
    raw = [n for n in config.sources if config.sources[n].filter]
    sample = lambda names: corpus_prep.reservoir(  # noqa: E731
        ({**d, "text": d["text"][:100_000]} for n in names for d in documents(config, n)),
        q.max_train_docs, rng)
    classifier = corpus_prep.QualityClassifier(n_features=q.n_features, ngram=q.ngram, C=q.C,
                                               folds=q.folds, seed=config.seed)
    report = classifier.fit(sample(refs), sample(raw))
    return classifier, dict(report, reference=refs, raw=raw)


def _clear(directory: pathlib.Path) -> None:
    """Old shards would otherwise survive a re-run that writes fewer."""
    if directory.is_dir():
        for p in directory.glob("shard-*.jsonl*"):
            p.unlink()


def main(config, workdir):
    check(config)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    stats = {"machine": machine(), "config": json.loads(config.to_json_best_effort())}
    names = list(config.sources)
    filtered = [n for n in names if config.sources[n].filter]

    classifier = None
    if filtered:
        t = time.perf_counter()
        classifier, stats["classifier"] = train_classifier(config, rng)
        stats["classifier"]["seconds"] = round(time.perf_counter() - t, 2)
        print(f"classifier: {stats['classifier']}")

    d = config.dedup
    make_index = lambda: corpus_prep.NearDuplicates(  # noqa: E731
        d.threshold, d.num_perm, d.shingle, d.shingle_size, seed=config.seed + 1)
    index = make_index() if d.across_sources else None
    shards, per_source = {}, {}
    for name in sorted(names, key=lambda n: config.sources[n].filter):  # curated ones first
        t, s = time.perf_counter(), SourceStats()
        per_source[name] = s

        def counted_in(docs, s=s):
            for doc in docs:
                s.docs_in += 1
                s.chars_in += len(doc["text"])
                yield doc

        def counted_out(docs, s=s):
            for doc in docs:
                s.docs_out += 1
                s.chars_out += len(doc["text"])
                s.longest_out = max(s.longest_out, len(doc["text"]))
                yield doc

        docs = counted_in(documents(config, name))
        if config.sources[name].filter:
            docs = corpus_prep.quality_filter(docs, classifier, config.quality.alpha, rng,
                                              config.quality.batch, on_scored=s.on_scored)
        docs = corpus_prep.drop_duplicates(docs, index or make_index(),
                                           on_duplicate=s.on_duplicate)
        _clear(workdir / "sources" / name)
        shards[name] = corpus_prep.write_shards(counted_out(docs), workdir / "sources" / name,
                                                config.docs_per_shard)
        s.seconds = time.perf_counter() - t
        print(f"{name}: {s.docs_in} documents in, {s.docs_out} out "
              f"({s.exact_duplicates} exact and {s.near_duplicates} near duplicates"
              + (f", quality kept {s.quality_kept}/{s.scored}" if s.scored else "") + ")")
    stats["sources"] = {n: per_source[n].report(n, n in filtered) for n in names}
    stats["dedup"] = {
        "near_duplicates": sum(s.near_duplicates for s in per_source.values()),
        "exact_duplicates": sum(s.exact_duplicates for s in per_source.values())}

    stats["mixture"] = mixture(config, shards, per_source, workdir)
    stats["seconds"] = round(time.perf_counter() - start, 2)
    (workdir / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    m = stats["mixture"]
    print(f"corpus: {m['docs']} documents, {m['chars']} characters in {m['shards']} shards; "
          f"shares {m['share']}; epochs {m['epochs']}; {stats['seconds']} s")
    return stats


def mixture(config, shards: dict, per_source: dict, workdir: pathlib.Path) -> dict:
    t = time.perf_counter()
    unit, max_epochs = config.mixture.unit, config.mixture.max_epochs
    weights = {n: config.sources[n].weight for n in config.sources}
    empty = [n for n, w in weights.items() if w > 0 and not shards[n]]
    if empty:
        raise ValueError(f"sources {empty} have no documents left after filtering")
    size = lambda s: s.chars_out if unit == "chars" else s.docs_out  # noqa: E731
    chunk = config.mixture.chunk_chars if unit == "chars" else 0
    longest = {n: 1 if unit == "docs" else min(s.longest_out, chunk or s.longest_out)
               for n, s in per_source.items()}
    plan = corpus_prep.plan_mixture({n: size(s) for n, s in per_source.items()}, longest,
                                    weights, max_epochs, config.mixture.total)
    norm = sum(weights.values())
    for name, needed in plan["too_small"].items():
        logging.warning("mixture: source %s is too small: its weight %.3f of %d %s would need "
                        "%.1f epochs of its %d, above mixture.max_epochs %g; capped at %g",
                        name, weights[name] / norm, plan["nominal"], unit, needed,
                        size(per_source[name]), max_epochs, max_epochs)

    def factory(name):
        docs = lambda: corpus_prep.read_jsonl(shards[name])  # noqa: E731
        return (lambda: corpus_prep.split_long(docs(), chunk)) if chunk else docs

    factories = {n: factory(n) for n in plan["quota"]}
    counts = {n: {"docs": 0, "chars": 0} for n in weights}

    def counted(docs):
        for doc in docs:
            counts[doc["source"]]["docs"] += 1
            counts[doc["source"]]["chars"] += len(doc["text"])
            yield doc

    # Drawn by the planned quotas, so that a capped source is spread over the whole corpus.
    total = sum(plan["quota"].values())
    _clear(workdir / "corpus")
    paths = corpus_prep.write_shards(
        counted(corpus_prep.mix(factories, plan["quota"], total, unit, caps=plan["cap"])),
        workdir / "corpus", config.docs_per_shard)
    got = {n: c[unit] for n, c in counts.items()}
    done = sum(got.values())
    return {
        "unit": unit, "total": int(total), "nominal_total": int(plan["nominal"]),
        "shards": len(paths),
        "docs": sum(c["docs"] for c in counts.values()),
        "chars": sum(c["chars"] for c in counts.values()),
        "counts": counts,
        "weight": {n: w / norm for n, w in weights.items()},
        "share": {n: round(g / max(done, 1), 4) for n, g in got.items()},
        "epochs": {n: round(got[n] / size(per_source[n]), 3) if size(per_source[n]) else 0.0
                   for n in weights},
        "too_small": {n: {"epochs_needed": round(e, 1), "max_epochs": max_epochs}
                      for n, e in plan["too_small"].items()},
        "seconds": round(time.perf_counter() - t, 2)}


if __name__ == "__main__":
    launch.run(main, "corpus.py:offline")
