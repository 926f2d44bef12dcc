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


# Markup residue (strip_markup), on strings copied from the 2018 metadata files.
def test_markup_residue_on_real_strings():
    # Magazine_Subscriptions titles that are the tail of an image's alt attribute.
    assert clean_text(' Magazines" />') == "Magazines"
    assert clean_text(' Magazines" />', strip_markup=False) == 'Magazines" />'
    assert clean_text("Industrial & Scientific />") == "Industrial & Scientific"
    # Titles cut inside a tag carry nothing of the item.
    assert make_attributes(title='<span class="a-size-medium a-color-secondary"').title == UNKNOWN
    # HTML entities, some escaped twice (Office_Products, Gift_Cards).
    assert clean_text("Quartet&reg; Chalkboard, 14&quot; x 14&quot;, Wood Finish Frame") == (
        'Quartet® Chalkboard, 14" x 14", Wood Finish Frame'
    )
    assert clean_text(" Maggiano&#39;s Gift Card") == "Maggiano's Gift Card"
    assert clean_text("Texas Parks &amp;amp; Wildlife") == "Texas Parks & Wildlife"
    # A "<" that opens no tag is text; the earlier cleaning cut the title there.
    assert clean_text("Spacer 5 < 6 inch") == "Spacer 5 < 6 inch"
    assert clean_text("Spacer 5 < 6 inch", strip_markup=False) == "Spacer 5"
    # An arrow is not a tag end.
    assert clean_text("Next page ->") == "Next page ->"


def test_list_valued_brands():
    assert make_attributes(brand=["Sharpie", "", "Sharpie ", "AT&amp;T"]).brand == "Sharpie, AT&T"
    assert make_attributes(brand="['Elmer&#39;s', 'X-Acto']").brand == "Elmer's, X-Acto"
    legacy = make_attributes(brand=["Sharpie", "AT&T"], strip_markup=False).brand
    assert legacy == "['Sharpie', 'AT&T']"
    assert make_attributes(brand="[not a list").brand == "[not a list"


def _residue(path, strip_markup: bool) -> int:
    import gzip

    from calrec_core.data.raw import BadLine, parse_meta
    from calrec_core.item_text import has_markup_residue

    count = 0
    with gzip.open(path, "rb") as lines:
        for raw in lines:
            try:
                _, attributes = parse_meta(raw, strip_markup=strip_markup)
            except BadLine:
                continue
            count += has_markup_residue(format_item(attributes))
    return count


def test_no_markup_residue_left_in_the_bundled_sample(sample_dir):
    paths = sorted(sample_dir.glob("meta_*.json.gz"))
    assert paths
    for path in paths:
        assert _residue(path, strip_markup=True) == 0, path


def test_no_markup_residue_left_in_real_metadata(shared_data):
    magazines = shared_data / "amazon2018" / "meta_Magazine_Subscriptions.json.gz"
    assert _residue(magazines, strip_markup=False) >= 10  # the ' Magazines" />' titles
    assert _residue(magazines, strip_markup=True) == 0
    office = shared_data / "office2014" / "meta_Office_Products.json.gz"
    assert _residue(office, strip_markup=True) == 0


def test_non_string_values_are_flattened_to_their_strings():
    attrs = make_attributes(title={"en": "Blue Mug", "size": 12}, brand=[["Acme"], ("Acme",)],
                            price=12.5)
    assert attrs.as_tuple() == ("Blue Mug, 12", UNKNOWN, "Acme", "12.5")
    assert "{" not in format_item(attrs)
    nested = "Deep"
    for _ in range(5000):  # far deeper than Python's recursion limit
        nested = [nested]
    assert make_attributes(title=nested).title == "Deep"


def test_lengths_are_capped_in_characters_too():
    from calrec_core.item_text import CHAR_LIMITS

    word = "x" * 100_000
    assert make_attributes(brand=word).brand == "x" * CHAR_LIMITS["brand"]
    title = make_attributes(title="Short words then " + word).title
    assert title == "Short words then"
    # Real values stay whole.
    assert make_attributes(title="Pro Flex Sealant 10 Oz").title == "Pro Flex Sealant 10 Oz"


def test_script_and_style_contents_are_dropped():
    assert clean_text("Mug<script>var x = '<b>';</script> Blue") == "Mug Blue"
    assert clean_text("Mug<STYLE type='text/css'>.a{color:red}</STYLE>") == "Mug"
    assert clean_text("Mug <script>unterminated code") == "Mug"
