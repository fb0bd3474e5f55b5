"""experiments.clip_claims: the efficiency, temperature, prompting and shots reports on runs of
experiments.clip."""

import csv
import json

import numpy as np
import pytest

from experiments import clip_claims


def test_images_to_reach_interpolates_and_says_never():
    curve = {0: 0.1, 100: 0.2, 200: 0.4}
    assert clip_claims.images_to_reach(curve, 0.3) == pytest.approx(150.0)
    assert clip_claims.images_to_reach(curve, 0.05) == 0.0
    assert clip_claims.images_to_reach(curve, 0.5) is None


def test_shots_worth_is_log_linear_between_the_bracketing_shots():
    probe = {1: 0.2, 2: 0.3, 4: 0.4, 8: 0.5, 16: 0.6}
    assert clip_claims.shots_worth(probe, 0.35) == f"{2 * 2 ** 0.5:.1f}"
    assert clip_claims.shots_worth(probe, 0.1) == "< 1"
    assert clip_claims.shots_worth(probe, 0.9) == "> 16"


def test_ensemble_scores_renormalise_the_mean_prompt_embedding():
    rng = np.random.default_rng(0)
    t_e = rng.normal(size=(3, 4, 5))
    t_e /= np.linalg.norm(t_e, axis=-1, keepdims=True)
    i_e = rng.normal(size=(7, 5))
    w = t_e.mean(axis=1)
    expected = i_e @ (w / np.linalg.norm(w, axis=-1, keepdims=True)).T
    np.testing.assert_allclose(clip_claims.ensemble_scores(i_e, t_e), expected, rtol=1e-6)
    # One prompt per class: the ensemble is that prompt.
    np.testing.assert_allclose(clip_claims.ensemble_scores(i_e, t_e[:, :1]), i_e @ t_e[:, 0].T,
                               rtol=1e-6)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A two-run 'sweep' of tiny CLIPs (t learned, then fixed), 4 steps each."""
    from experiments import clip as experiment
    from experiments.configs import clip as configs
    root = tmp_path_factory.mktemp("sweep")
    rows = []
    for seed, learn in ((0, True), (1, False)):
        config = configs.get_config("tiny")
        config.seed = seed
        config.train.steps, config.train.batch_size = 4, 16
        config.train.eval_every, config.train.log_every, config.train.eval_steps = 2, 2, 1
        config.train.warmup_steps = 2
        e = config.evals
        e.val_zeroshot.images, e.test_zeroshot.images = 40, 60
        e.test_probe.update(images=60, train_images=80, val_images=40, Cs=(1.0,))
        config.model.learn_temperature = learn
        name = f"model.learn_temperature={learn},seed={seed}"
        experiment.main(config, root / name)
        rows.append({"model.learn_temperature": str(learn), "seed": str(seed), "run": name})
    with (root / "results.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


def test_prompting_reproduces_the_runs_own_zero_shot(sweep):
    """The report's ensemble and first prompt on the test evaluator's scenes are the numbers
    the run logged; leaving a prompt out and the bare name are accuracies too."""
    run_path = sweep / "model.learn_temperature=True,seed=0"
    test = [json.loads(line) for line in (run_path / "metrics.jsonl").read_text().splitlines()
            if '"test"' in line][-1]
    run = clip_claims.Run(run_path)
    r = clip_claims.prompting_run(run, "heldout_pairs", n=60)
    assert r["ensemble"] == pytest.approx(test["zeroshot_top1"], abs=1e-6)
    assert r["alone 0"] == pytest.approx(test["zeroshot_top1_single_prompt"], abs=1e-6)
    assert np.mean([r[f"alone {j}"] for j in range(7)]) == pytest.approx(
        test["zeroshot_top1_prompt_mean"], abs=1e-6)
    assert all(0.0 <= r[k] <= 1.0 for k in ("bare", "without 0", "without 6"))
    # Only the contrastive runs with a learned temperature are compared.
    assert clip_claims.contrastive_runs(sweep) == [run_path]


def test_shots_probe_draws_and_zero_shot(sweep):
    run = clip_claims.Run(sweep / "model.learn_temperature=True,seed=0")
    r = clip_claims.shots_run(run, "digits", draws=2, C=1.0, n=60, n_train=80, shots=(1, 2))
    assert set(r) == {"zero-shot", 1, 2}
    assert all(0.0 <= v <= 1.0 for v in r.values())
    assert r["zero-shot"] == pytest.approx(clip_claims.prompting_run(run, "digits", 60)
                                           ["ensemble"])


def test_temperature_report_tracks_exp_t(sweep):
    text, scales = clip_claims.temperature(sweep)
    learned, fixed = scales["True"], scales["False"]
    assert all(v == pytest.approx(1 / 0.07, rel=1e-5) for v in fixed[0].values())
    assert list(learned[0]) == [2, 4] and learned[0][4] != pytest.approx(1 / 0.07, rel=1e-7)
    assert "| False | 1 | 14.29 |" in text


def test_efficiency_curves_are_against_images_seen(sweep):
    text, curves = clip_claims.efficiency(sweep)
    assert list(curves["True"]["heldout pairs"]) == [0, 32, 64]   # steps 0, 2, 4 x batch 16
    assert "| True | 1 |" in text and "images the better needed" in text


def test_a_predictive_run_is_refused_for_prompting(tmp_path, sweep):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(sweep / "model.learn_temperature=True,seed=0", run)
    config = json.loads((run / "config.json").read_text())
    config["model"]["objective"] = "caption"
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="objective 'caption'"):
        clip_claims.Run(run)
