"""Masking: which output columns derive from sensitive ones (lineage), maskers, and value detectors.

    rules.py       MaskRules: sensitive column patterns → masker, predicate verdicts, detectors on
    catalog.py     Catalog: tables → columns, views → SQL (plain data from the executor)
    qualified.py   a statement parsed and qualified against the catalog (DML read as its SELECT)
    lineage.py     output column → the source columns it derives from, or why that is unknown
    predicates.py  sensitive columns used in conditions, ordering, grouping: inference channels
    plan.py        plan(statements, catalog, rules) → MaskPlan (per-column maskers + verdict)
    maskers.py     redact, null, hash, email, partial; the strongest wins
    detectors.py   value detectors over any text (emails, cards, keys, tokens, ...)
    apply.py       mask_result(columns, rows, plan) → masked rows + a record without values
"""

from bastion.policy.masking.apply import mask_result, mask_text
from bastion.policy.masking.catalog import Catalog
from bastion.policy.masking.detectors import KINDS as DETECTOR_KINDS
from bastion.policy.masking.detectors import Detectors
from bastion.policy.masking.lineage import Lineage, Output
from bastion.policy.masking.maskers import MASKERS, STRENGTH, mask, strongest
from bastion.policy.masking.plan import ColumnMask, MaskPlan, plan
from bastion.policy.masking.predicates import PredicateUse
from bastion.policy.masking.rules import PROBING, USES, MaskRules, SensitiveColumn

__all__ = [
    "Catalog", "ColumnMask", "DETECTOR_KINDS", "Detectors", "Lineage", "MASKERS", "MaskPlan", "MaskRules", "Output",
    "PROBING", "PredicateUse", "STRENGTH", "SensitiveColumn", "USES", "mask", "mask_result", "mask_text", "plan",
    "strongest",
]
