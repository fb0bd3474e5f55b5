"""CLIP's two evaluations (Radford et al. 2021, section 3): zero-shot and linear probe.

Zero-shot: each class is described by prompts ("a photo of the number {x}."); the classifier's
weights are the text embeddings of those prompts, and an image gets the class whose embedding
is most similar to its own. Prompt ensembling (section 3.1.4) averages the normalised embeddings
of several prompts per class and normalises again, building the ensemble in embedding space.

Linear probe (section 3.2): logistic regression (L-BFGS) on frozen image features, the L2
regularisation strength chosen on a validation split, accuracy on the test split.
"""

from collections.abc import Callable, Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler


def in_batches(fn: Callable, x: np.ndarray, batch_size: int) -> np.ndarray:
    """fn over x in chunks of batch_size, results concatenated (as numpy)."""
    return np.concatenate([np.asarray(fn(x[i : i + batch_size]))
                           for i in range(0, len(x), batch_size)])


def l2_normalize(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def zeroshot_weights(prompt_embeds: np.ndarray) -> np.ndarray:
    """Prompt ensembling: [classes, prompts, d] normalised embeddings -> [classes, d]."""
    return l2_normalize(prompt_embeds.mean(axis=1))


def zeroshot_top1(image_embeds: np.ndarray, class_weights: np.ndarray, labels) -> float:
    """Top-1 accuracy of argmax_c <I_e, W_c>."""
    predictions = np.argmax(image_embeds @ class_weights.T, axis=-1)
    return float(np.mean(predictions == np.asarray(labels)))


def linear_probe(train: tuple, val: tuple, test: tuple, Cs: Sequence[float],
                 max_iter: int = 1000) -> dict:
    """Each split is (features [n, d], labels [n]). Features are standardised with the train
    split's statistics (helps L-BFGS converge); C = 1 / lambda is picked by val accuracy."""
    scaler = StandardScaler().fit(train[0])
    x_train, x_val, x_test = (scaler.transform(s[0]) for s in (train, val, test))
    best = None
    for C in Cs:
        clf = LogisticRegression(C=C, solver="lbfgs", max_iter=max_iter).fit(x_train, train[1])
        acc = clf.score(x_val, val[1])
        if best is None or acc > best[0]:
            best = (acc, C, clf)
    val_top1, C, clf = best
    return {"C": C, "val_top1": float(val_top1), "test_top1": float(clf.score(x_test, test[1]))}
