"""calrec_core: the CALRec library (data, model, training, evaluation), free of KFP/GCP."""

from calrec_core.item_text import ItemAttributes, format_item, make_attributes, parse_item_text
from calrec_core.template import calrec_segments, encode_example, gpt4rec_segments

__all__ = [
    "ItemAttributes",
    "calrec_segments",
    "encode_example",
    "format_item",
    "gpt4rec_segments",
    "make_attributes",
    "parse_item_text",
]
