"""QA items: the record, loaders for files and built-in sets, schema adapters."""

from unpact_mech.data.loaders import SCHEMAS, load_items
from unpact_mech.data.record import QAItem
from unpact_mech.data.splits import FORGET, RETAIN, SPLITS, UTILITY, require_split, split_items

__all__ = ["FORGET", "QAItem", "RETAIN", "SCHEMAS", "SPLITS", "UTILITY", "load_items", "require_split", "split_items"]
