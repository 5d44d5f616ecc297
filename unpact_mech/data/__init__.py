"""QA items: the record, loaders for files and built-in sets, schema adapters, and the data contract."""

from unpact_mech.data.contract import RESERVED_FIELDS
from unpact_mech.data.loaders import SCHEMAS, load_items
from unpact_mech.data.record import QAItem
from unpact_mech.data.splits import FORGET, RETAIN, SPLITS, UNSPLIT, UTILITY, require_split, split_items

__all__ = [
    "FORGET",
    "QAItem",
    "RESERVED_FIELDS",
    "RETAIN",
    "SCHEMAS",
    "SPLITS",
    "UNSPLIT",
    "UTILITY",
    "load_items",
    "require_split",
    "split_items",
]
