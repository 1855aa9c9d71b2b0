"""The decision policy: when a field may be called benign, when malignant, and when it is referred.

Class-conditional (Mondrian) split-conformal prediction on the calibrated probabilities, fitted on
the validation split only (Vovk et al., "Algorithmic Learning in a Random World", 2005, ch. 4;
Angelopoulos & Bates, "A Gentle Introduction to Conformal Prediction", 2021, sec. 4.5). Two levels:

* **Benign or malignant.** The conformity of "malignant" is ``p_malignant`` (the summed probability
  of the malignant classes), calibrated on the malignant validation fields; that of "benign" is
  ``p_benign = 1 - p_malignant``, calibrated on the benign ones. Malignancy is *ruled out* when
  ``p_malignant`` is below the malignant fields' conformal threshold at level ``alpha``: then at
  most ``alpha`` of malignant fields are called benign. Benign is ruled out at level
  ``alpha_benign`` the same way, on the benign fields.
* **Which subtype.** A malignant answer names every subtype whose conditional probability
  ``p_c / p_malignant`` reaches its own conformal threshold (level ``alpha_subtype``, calibrated
  on that subtype's validation fields): the subtypes it cannot tell apart.

The prediction set is {Benign, unless ruled out} ∪ {the subtype set, unless malignancy is ruled
out}, and the verdict follows from it: {Benign} → ``benign``; subtypes only → ``malignant``; both →
``uncertain``: refer for expert review. When both categories are ruled out (possible only at a large
``alpha``, above the benign level), the subtypes stay: a set is never empty, and the safer answer wins.

The guarantee holds on average over calibration draws when the validation fields and a new field
are exchangeable: unseen fields of the patients, sessions and lab the model was trained on. It
says nothing about other labs, stains or microscopes, nor about new patients unless the split held
patients apart (:data:`ASSUMPTION`). A level
``alpha`` needs at least ``1/alpha - 1`` calibration fields of the category (199 malignant fields
for 0.005): with fewer, nothing can be ruled out at that level and every such field is referred.

A conformal threshold with k = floor(alpha (n + 1)) is the k-th smallest calibration conformity
score; a label stays in the set when its score is at least that (the same sets as crepes'
non-smoothed class-conditional p-values, see the tests).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from allstudy.data.classes import display_name, is_malignant

#: At most this fraction of malignant fields may be called benign (the guarantee).
DEFAULT_ALPHA = 0.005
#: At most this fraction of benign fields may be called malignant (the cheaper error).
DEFAULT_ALPHA_BENIGN = 0.05
#: At most this fraction of malignant answers may leave the true subtype out of their set.
DEFAULT_ALPHA_SUBTYPE = 0.05
#: The levels of the trade-off curve (referral against missed malignant fields).
ALPHA_GRID = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)
#: What the guarantee assumes, stated wherever the guarantee is.
ASSUMPTION = (
    "the guarantee assumes a new image is exchangeable with the validation images: of the lab, stain and "
    "microscope the model was trained on, and of its training patients unless the split held patients apart "
    "(as C-NMC's subject split does); it does not cover other labs, stains or microscopes"
)
VERDICTS = ("benign", "malignant", "uncertain")
FORMAT = 1


def fields_needed(alpha: float) -> int:
    """The fewest calibration fields of a category for which level ``alpha`` can exclude anything."""
    return max(0, math.ceil(1.0 / alpha - 1.0 - 1e-9))


def conformal_threshold(scores: np.ndarray, alpha: float) -> float:
    """The conformity threshold at level ``alpha`` of one category's calibration scores.

    The k-th smallest score, k = floor(alpha (n + 1)); a new field of the category scores below it
    with probability at most alpha. 0.0 (never below: nothing excluded) when k is 0, i.e. when there
    are fewer than :func:`fields_needed` scores; scores are probabilities, so 0.0 excludes nothing.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"a conformal level must lie strictly between 0 and 1, not {alpha}")
    scores = np.sort(np.asarray(scores, dtype=np.float64))
    k = math.floor(alpha * (len(scores) + 1) + 1e-9)
    return float(scores[k - 1]) if k >= 1 else 0.0


def _pct(alpha: float) -> str:
    return f"{100 * (1 - alpha):.4g} %"


@dataclass(frozen=True)
class Decisions:
    """The policy's answers for N fields (arrays of length N; ``sets`` is (N, k) booleans)."""

    verdict: np.ndarray  # "benign", "malignant" or "uncertain"
    sets: np.ndarray  # class c is in field i's prediction set
    label: np.ndarray  # the answered class index: Benign's for benign, the top subtype's otherwise
    p_malignant: np.ndarray

    @property
    def referred(self) -> np.ndarray:
        return self.verdict == "uncertain"


@dataclass(frozen=True)
class DecisionPolicy:
    """A fitted policy (see the module docstring); ``to_json`` is what model.json records."""

    classes: tuple[str, ...]
    malignant: tuple[bool, ...]
    alpha: float
    alpha_benign: float
    alpha_subtype: float
    rule_out: float  # p_malignant below this: malignancy ruled out
    benign_limit: float  # p_malignant above this: benign ruled out
    subtype_thresholds: dict[str, float] = field(default_factory=dict)  # on p_c / p_malignant
    calibration: dict = field(default_factory=dict)  # split, n, n per category and class

    # ------------------------------------------------------------------ fitting

    @classmethod
    def fit(
        cls,
        y: np.ndarray,
        proba: np.ndarray,
        classes: list[str],
        alpha: float = DEFAULT_ALPHA,
        alpha_benign: float = DEFAULT_ALPHA_BENIGN,
        alpha_subtype: float = DEFAULT_ALPHA_SUBTYPE,
        split: str = "val",
    ) -> DecisionPolicy:
        """Fit on the calibration split's labels (class indices) and calibrated probabilities."""
        y, proba = np.asarray(y, dtype=np.intp), np.asarray(proba, dtype=np.float64)
        if proba.ndim != 2 or proba.shape != (len(y), len(classes)):
            raise ValueError(
                f"probabilities of shape {proba.shape} do not match {len(y)} labels of {len(classes)} classes"
            )
        malignant = np.array([is_malignant(c) for c in classes])
        p_mal = proba[:, malignant].sum(axis=1)
        true_m = malignant[y]
        subtype = {}
        for i in np.flatnonzero(malignant):
            own = y == i
            subtype[classes[i]] = conformal_threshold(_conditional(proba[own], p_mal[own], int(i)), alpha_subtype)
        n_per_class = {c: int((y == i).sum()) for i, c in enumerate(classes)}
        calibration = {
            "split": split,
            "n": int(len(y)),
            "n_malignant": int(true_m.sum()),
            "n_benign": int((~true_m).sum()),
            "n_per_class": n_per_class,
            "fields_needed": {
                "alpha": fields_needed(alpha),
                "alpha_benign": fields_needed(alpha_benign),
                "alpha_subtype": fields_needed(alpha_subtype),
            },
        }
        # With no benign (malignant) class at all, malignancy (benign) is ruled out by definition.
        rule_out = conformal_threshold(p_mal[true_m], alpha) if malignant.any() else 1.0
        benign_limit = 1.0 - conformal_threshold(1.0 - p_mal[~true_m], alpha_benign) if (~malignant).any() else 0.0
        return cls(
            tuple(classes),
            tuple(bool(m) for m in malignant),
            float(alpha),
            float(alpha_benign),
            float(alpha_subtype),
            rule_out=rule_out,
            benign_limit=benign_limit,
            subtype_thresholds=subtype,
            calibration=calibration,
        )

    # ------------------------------------------------------------------ deciding

    def decide(self, proba: np.ndarray) -> Decisions:
        """The verdict, prediction set and answered class of each row of calibrated probabilities."""
        proba = np.atleast_2d(np.asarray(proba, dtype=np.float64))
        malignant = np.array(self.malignant)
        p_mal = proba[:, malignant].sum(axis=1)
        ruled_out = p_mal < self.rule_out
        benign_out = p_mal > self.benign_limit
        top_benign = np.where(malignant, -1.0, proba).argmax(axis=1)
        top_subtype = np.where(malignant, proba, -1.0).argmax(axis=1)
        subtypes = np.zeros(proba.shape, dtype=bool)
        for i in np.flatnonzero(malignant):
            subtypes[:, i] = _conditional(proba, p_mal, int(i)) >= self.subtype_thresholds.get(self.classes[i], 0.0)
        if malignant.any():  # a malignant answer names at least its most probable subtype
            unnamed = np.flatnonzero(~subtypes.any(axis=1))
            subtypes[unnamed, top_subtype[unnamed]] = True
        # A set is never empty: when both categories are excluded (possible only at a large alpha), the
        # malignant subtypes stay, the safer of the two answers.
        sets = subtypes & (~ruled_out | benign_out)[:, None]
        sets[:, ~malignant] = ~benign_out[:, None]
        verdict = np.where(benign_out, "malignant", np.where(ruled_out, "benign", "uncertain"))
        label = np.where(
            verdict == "benign", top_benign, np.where(verdict == "malignant", top_subtype, proba.argmax(axis=1))
        )
        return Decisions(verdict.astype(object), sets, label.astype(np.intp), p_mal)

    def names(self, in_set: np.ndarray) -> list[str]:
        """The class names of one prediction set (a row of :attr:`Decisions.sets`)."""
        return [c for c, inside in zip(self.classes, in_set, strict=True) if inside]

    def message(self, verdict: str, in_set: np.ndarray, p_malignant: float) -> str:
        """What a person reads: the verdict with its subtype(s), or why the field is referred."""
        names = [display_name(c) for c in self.names(in_set) if c in self.subtype_thresholds]
        if verdict == "benign":
            benign = [display_name(c) for c, m in zip(self.classes, self.malignant, strict=True) if not m]
            return f"{benign[0] if benign else 'Benign'}: leukemia ruled out at the {_pct(self.alpha)} level"
        if verdict == "malignant":
            return "Malignant: " + " or ".join(names) if names else "Malignant"
        if self.rule_out <= 0.0:
            return (
                f"leukemia cannot be ruled out at the {_pct(self.alpha)} level: the model was calibrated on "
                f"{self.calibration.get('n_malignant', 0)} malignant fields, fewer than the "
                f"{fields_needed(self.alpha)} that level needs"
            )
        if p_malignant < 0.5:
            return (
                f"Benign is likely, but leukemia is not ruled out at the {_pct(self.alpha)} level "
                f"(probability of leukemia {p_malignant:.1%})"
            )
        return (
            f"leukemia is likely ({' or '.join(names)}), but a benign field is not ruled out at the "
            f"{_pct(self.alpha_benign)} level"
        )

    # ------------------------------------------------------------------ model.json

    def to_json(self) -> dict:
        """The policy as model.json's ``decision`` (plain JSON)."""
        record = asdict(self)
        record["classes"], record["malignant"] = list(self.classes), list(self.malignant)
        return {
            "format": FORMAT,
            "method": "class-conditional (Mondrian) split-conformal, on calibrated probabilities",
            **record,
            "assumption": ASSUMPTION,
        }

    @classmethod
    def from_json(cls, record: dict) -> DecisionPolicy:
        """The policy model.json's ``decision`` describes (a clear error when it is not one)."""
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise ValueError(f"not a decision policy of format {FORMAT}: {str(record)[:80]}")
        try:
            return cls(
                tuple(record["classes"]),
                tuple(bool(m) for m in record["malignant"]),
                float(record["alpha"]),
                float(record["alpha_benign"]),
                float(record["alpha_subtype"]),
                float(record["rule_out"]),
                float(record["benign_limit"]),
                {k: float(v) for k, v in record["subtype_thresholds"].items()},
                dict(record.get("calibration", {})),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"the decision policy lacks or garbles {err}") from None


def _conditional(proba: np.ndarray, p_mal: np.ndarray, i: int) -> np.ndarray:
    """p_i / p_malignant: the subtype's probability given malignancy (0 where p_malignant is 0)."""
    return np.divide(proba[:, i], p_mal, out=np.zeros(len(p_mal)), where=p_mal > 0)
