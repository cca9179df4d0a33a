"""Reference for tests/cpu/ocsvm_sklearn.rs: fits scikit-learn's SGDOneClassSVM (defaults,
nu=0.5, linear) on M3DM-like 3-D score vectors and writes the fixture
tests/fixtures/ocsvm_sklearn.safetensors (train and test samples, sklearn's coef, offset and
decision scores on the test samples).

Run: /work/pyref/bin/python tests/reference/ocsvm_reference.py
"""
import os

import numpy as np
from safetensors.numpy import save_file
from sklearn.linear_model import SGDOneClassSVM

rng = np.random.default_rng(20241123)


def score_vectors(n, anomalous_fraction):
    # (1.0*s_xyz, 0.1*s_rgb, 1.0*s_fused)-like: positive, correlated, heavy right tail.
    base = rng.gamma(4.0, 0.5, size=(n, 1))
    v = np.concatenate(
        [
            base * rng.uniform(0.8, 1.2, size=(n, 1)) + rng.normal(0, 0.1, (n, 1)),
            0.1 * (2.0 * base + rng.normal(0, 0.5, (n, 1))),
            base * 1.5 + rng.normal(0, 0.2, (n, 1)),
        ],
        axis=1,
    )
    k = int(n * anomalous_fraction)
    v[:k] += rng.uniform(0.5, 3.0, size=(k, 3)) * np.array([1.0, 0.1, 1.0])
    return np.abs(v).astype(np.float32)


train = score_vectors(200, 0.0)
test = score_vectors(500, 0.3)
clf = SGDOneClassSVM(nu=0.5, random_state=42).fit(train)
f32 = lambda a: np.ascontiguousarray(np.asarray(a, dtype=np.float32))
out = {
    "train": f32(train),
    "test": f32(test),
    "coef": f32(clf.coef_.ravel()),
    "offset": f32(clf.offset_),
    "decision": f32(clf.decision_function(test)),
    "score_samples": f32(clf.score_samples(test)),
}
here = os.path.dirname(os.path.abspath(__file__))
save_file(
    out,
    os.path.join(here, "..", "fixtures", "ocsvm_sklearn.safetensors"),
    metadata={"note": "SGDOneClassSVM(nu=0.5, random_state=42), n_iter=%d" % clf.n_iter_},
)
print("coef", clf.coef_, "offset", clf.offset_, "n_iter", clf.n_iter_)
