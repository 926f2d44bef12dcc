"""Item text format (§3.2, §4) and its inverse used by hierarchical matching (§6)."""

from calrec_core.item_text import (
    UNKNOWN,
    ItemAttributes,
    clean_text,
    format_item,
    make_attributes,
    parse_item_text,
)


def test_format_matches_paper_example():
    attrs = make_attributes(
        title="Pro Flex Super Flexible Elastomeric Sealant Acrylic Clear Paintable 10 Oz",
        category="Tools & Home Improvement",
        brand="Geocel",
        price="$11.22",
    )
    assert format_item(attrs) == (
        "Title: Pro Flex Super Flexible Elastomeric Sealant Acrylic Clear Paintable 10 Oz. "
        "Category: Tools & Home Improvement. Brand: Geocel. Price: $11.22."
    )


def test_missing_and_empty_values_become_unknown():
    attrs = make_attributes(title="", category=None, brand="   ", price="<span></span>")
    assert attrs.as_tuple() == (UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN)


def test_truncation_word_limits():
    attrs = make_attributes(
        title=" ".join(f"t{i}" for i in range(40)),
        category=" ".join(f"c{i}" for i in range(40)),
        brand=" ".join(f"b{i}" for i in range(40)),
        price=" ".join(f"p{i}" for i in range(40)),
    )
    assert [len(v.split()) for v in attrs.as_tuple()] == [25, 15, 15, 15]


def test_html_junk_is_cleaned():
    assert clean_text('<span class="a-size-medium">Guitar &amp;amp; Bass</span>\n  World') == (
        "Guitar & Bass World"
    )
    assert make_attributes(title='<span class="a-size-medium a-color-secondary"').title == UNKNOWN


def test_parse_inverts_format():
    attrs = make_attributes(title="Mr. Coffee 12-Cup", category="Kitchen", brand="Mr. Coffee")
    assert parse_item_text(format_item(attrs)) == attrs
    assert parse_item_text(" " + format_item(attrs) + "\n") == attrs


def test_parse_rejects_malformed_text():
    assert parse_item_text("Title: only a title.") is None
    assert parse_item_text("") is None
    assert parse_item_text("Brand: x. Title: y. Category: z. Price: w.") is None
    assert isinstance(parse_item_text("Title: a. Category: b. Brand: c. Price: d"), ItemAttributes)
