"""Text rules: folding, word bounds, RE2 patterns refused at load, and the off-platform contact
detectors against hard negatives."""

import pytest
import yaml

from shoplens.safety.policy import DEFAULT_POLICY, PolicyError, load_policy
from shoplens.safety.text_rules import TextRules, fold


def policy_with(tmp_path, rules: dict | None = None, **extra):
    """The shipped policy, with `rules` as the drugs category's text rules and `extra` top-level keys."""
    document = yaml.safe_load(DEFAULT_POLICY.read_text())
    if rules is not None:
        document["categories"]["drugs"]["text_rules"] = rules
    document.update(extra)
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(document, allow_unicode=True))
    return load_policy(path)


def matched(rules: TextRules, text: str) -> list[tuple[str, str, str]]:
    return [(m.category, m.rule, m.text) for m in rules.match(text)]


@pytest.fixture(scope="module")
def shipped() -> TextRules:
    return TextRules(load_policy())


@pytest.mark.parametrize(
    "text, written",
    [
        ("pure cocaine here", "cocaine"),
        ("COCAINE", "COCAINE"),
        ("c0caine 5g", "c0caine"),  # a digit for a letter
        ("ｃｏｃａｉｎｅ", "ｃｏｃａｉｎｅ"),  # full-width letters
        ("cócaïne", "cócaïne"),  # accents
        ("соcaine", "соcaine"),  # Cyrillic с and о
        ("buy: heroin!", "heroin"),
        ("crystal meth", "crystal meth"),
        ("crystal-meth", "crystal-meth"),
        ("crystal\nmeth", "crystal\nmeth"),  # two lines OCR read
        ("coc\u200baine", "coc\u200baine"),  # a zero-width space
        ("co\u00adcaine", "co\u00adcaine"),  # a soft hyphen
        ("coc\ufe0faine", "coc\ufe0faine"),  # a variation selector
        ("coc\u034faine", "coc\u034faine"),  # a combining grapheme joiner
        ("@cocaine", "cocaine"),
        ("$heroin", "heroin"),
        ("h3r0in", "h3r0in"),
        ("FENTANYI", "FENTANYI"),  # a capital I for an l
        ("cocaine4sale", "cocaine"),
        ("heroin247", "heroin"),
        ("COCAINE1", "COCAINE"),
        ("һeroin", "һeroin"),  # Cyrillic һ
        ("heroın", "heroın"),  # a dotless ı
        ("co\u3164caine", "co\u3164caine"),  # a Hangul filler, a letter that draws nothing
        ("hero!n", "hero!n"),
    ],
)
def test_terms_match_after_folding_and_report_the_text_as_written(shipped, text, written):
    assert ("drugs", "term", written) in matched(shipped, text)


@pytest.mark.parametrize("text", ["a heroine of the story", "cocainelike", "methamphetamines? no: methanol", "crystal", ""])
def test_terms_match_whole_words_only(shipped, text):
    assert not [m for m in shipped.match(text) if m.category == "drugs"]


def test_folding_keeps_each_folded_character_tied_to_the_one_it_came_from():
    folded, origin = fold("Ｃ0ÇA")
    assert folded == "coca" and origin == [0, 1, 2, 3]


@pytest.mark.parametrize(
    "text, written",
    [
        ("Call +1 415-555-2671 now", "+1 415-555-2671"),
        ("(415) 555-2671", "(415) 555-2671"),
        ("whatsapp +44 7400 123456", "+44 7400 123456"),
        ("Tel. 030 12345678", "030 12345678"),
        ("＋４４ ７４００ １２３４５６", "+44 7400 123456"),  # full-width digits, read as written after width folding
    ],
)
def test_phone_numbers_are_found_in_the_policys_regions(shipped, text, written):
    assert ("off_platform_contact", "phone_number", written) in matched(shipped, text)


@pytest.mark.parametrize(
    "text, rule, written",
    [
        ("write to deals.shop@gmail.com", "email", "deals.shop@gmail.com"),
        ("see www.cheap-bags.xyz", "url", "www.cheap-bags.xyz"),
        ("https://bit.ly/3abc", "url", "https://bit.ly/3abc"),
        ("order at luxurybags.shop today", "url", "luxurybags.shop"),
        ("Telegram @shopdeals", "messaging_handle", "Telegram @shopdeals"),
        ("WeChat ID: bags_88", "messaging_handle", "WeChat ID: bags_88"),
        ("Line: shop123", "messaging_handle", "Line: shop123"),
        ("DM me on instagram", "messaging_handle", "DM me on instagram"),
        ("WhatsApp: sunnyshop", "messaging_handle", "WhatsApp: sunnyshop"),
        ("LINK：EXAMPLE-DEALS。COM", "url", "EXAMPLE-DEALS。COM"),  # an ideographic full stop
        ("telegram deals88", "messaging_handle", "telegram deals88"),
        ("telegram - deals88", "messaging_handle", "telegram - deals88"),
        ("wechat shop8888", "messaging_handle", "wechat shop8888"),
        ("telegram=deals88", "messaging_handle", "telegram=deals88"),
        ("telegram➡️deals88", "messaging_handle", "telegram➡️deals88"),
        ("LINE ID shop123", "messaging_handle", "LINE ID shop123"),
        ("join discord.gg/abc123", "url", "discord.gg/abc123"),
        ("linktr.ee/sunny", "url", "linktr.ee/sunny"),
    ],
)
def test_contact_details_are_found(shipped, text, rule, written):
    assert ("off_platform_contact", rule, written) in matched(shipped, text)


@pytest.mark.parametrize(
    "text",
    [
        "iPhone 15 Pro 256GB",
        "EU 42",
        "Size: M/L",
        "$1,299.00",
        "1.5kg",
        "v2.0",
        "Model A2848",
        "Order #4821-7733",
        "2024-05-12",
        "100% cotton",
        "a signal light",
        "online",
        "made in line with EU rules",
        "Snap buttons 100pcs",
        "snap hooks",
        "Kik scooter",
        "Skype headset",
        "Viber case",
        "TG 500 tile glue",
        "Contact us at our store",
        "find us in store",
        "Mr.Coffee",
        "README.md",
        "Model A1.SE",
        "Vol.Bio",
        "Year 2024, 1080p, 4K",
        "USB data line/charging cable",
        "Fishing line: 20lb",
        "Product line: Premium",
        "Hot sale.Shop now",
        "Waterproof.Top quality",
        "Easy to use.In stock",
        "Mini.Me doll",
        "Instagram worthy flat lay",
        "Telegram style hat",
    ],
)
def test_hard_negatives_match_no_rule(shipped, text):
    assert shipped.match(text) == []


def test_an_allowed_domain_and_its_subdomains_are_not_off_platform(tmp_path):
    policy = policy_with(tmp_path, text_detectors={"phone_regions": ["US"], "allowed_domains": ["brand.example.com"]})
    rules = TextRules(policy)
    assert rules.match("visit brand.example.com or shop.brand.example.com or https://brand.example.com/sale?x=1") == []
    assert matched(rules, "visit other.example.com") == [("off_platform_contact", "url", "other.example.com")]


@pytest.mark.parametrize(
    "link",
    [
        "https://evil.com#.brand.example.com",
        "www.evil.com#.brand.example.com",
        "http://evil.com\\.brand.example.com",
        "https://brand.example.com@evil.com/",
        "https://evil.com?.brand.example.com",
    ],
)
def test_a_link_dressed_as_an_allowed_domain_is_off_platform(tmp_path, link):
    rules = TextRules(policy_with(tmp_path, text_detectors={"phone_regions": ["US"], "allowed_domains": ["brand.example.com"]}))
    assert "url" in [m.rule for m in rules.match(f"see {link} now")]


def test_a_patterns_match_is_all_it_matched_whatever_its_groups(tmp_path):
    rules = TextRules(policy_with(tmp_path, {"patterns": [r"(\+?)\d{3}-\d{4}", r"(buy|sell) (coke|weed)"]}))
    assert {m.text for m in rules.match("call 555-1234 to buy weed") if m.category == "drugs"} == {"555-1234", "buy weed"}


def test_text_past_the_limit_is_not_read_and_a_long_title_is_refused_by_the_manifest(shipped, tmp_path):
    from shoplens.pipelines.ingest.manifest import MAX_TITLE_CHARS, read_manifest
    from shoplens.safety.text_rules import MAX_TEXT

    assert MAX_TEXT >= MAX_TITLE_CHARS and shipped.match("x " * (MAX_TEXT // 2) + "cocaine") == []
    (tmp_path / "m.csv").write_text(f"item_id,kind,title,image\na,product,{'x' * (MAX_TITLE_CHARS + 1)},a.jpg\n")
    rows = read_manifest(str(tmp_path / "m.csv")).rows.to_pylist()
    assert rows[0]["status"] == "error" and "over the 4,096 a title may have" in rows[0]["error"]


def test_patterns_run_in_linear_time_where_a_backtracking_engine_would_not_finish(tmp_path):
    rules = TextRules(policy_with(tmp_path, {"patterns": [r"(a+)+$"], "score": 0.7}))
    assert [m for m in rules.match("a" * 4000 + "!") if m.category == "drugs"] == []  # Python's re: exponential
    assert ("drugs", "pattern", "aaa") in matched(rules, "aaa")
    assert rules.probabilities(rules.match("aaa"))[rules.categories.index("drugs")] == 0.7


@pytest.mark.parametrize(
    "rules, message",
    [
        ({"patterns": ["(unclosed"]}, "invalid regular expression"),
        ({"patterns": [r"(a)\1"]}, "invalid regular expression"),  # a backreference: RE2 has none
        ({"terms": ["  "]}, "must not be blank"),
        ({"detectors": ["fax"]}, "detectors"),
        ({}, "need terms, patterns or detectors"),
        ({"terms": ["x"], "score": 0}, "score"),
    ],
)
def test_a_policy_with_a_bad_text_rule_is_refused(tmp_path, rules, message):
    with pytest.raises(PolicyError, match=message):
        policy_with(tmp_path, rules)


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"prompt_bank": {"logit_scale": 100, "fields": ["image", "alt_text"], "benign": ["a product"]}}, "prompt_bank.fields"),
        ({"text_detectors": {"phone_regions": ["XX"]}}, "unknown phone regions"),
        ({"ocr": {"enabled": False}, "prompt_bank": {"logit_scale": 100, "fields": ["ocr"], "benign": ["x"]}}, "ocr is not enabled"),
        ({"ocr": {"media": []}}, "media"),
        ({"ocr": {"max_side": 8}}, "max_side"),
    ],
)
def test_a_policy_with_bad_text_settings_is_refused(tmp_path, extra, message):
    with pytest.raises(PolicyError, match=message):
        policy_with(tmp_path, **extra)


def test_a_category_nothing_could_score_is_refused(tmp_path):
    document = yaml.safe_load(DEFAULT_POLICY.read_text())
    document["categories"]["gambling"] = {"review": 0.5, "block": 0.9}
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(document))
    with pytest.raises(PolicyError, match="nothing could score them"):
        load_policy(tmp_path / "policy.yaml")
