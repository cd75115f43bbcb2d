"""Text rules: what a policy's categories look for in written text (titles, the text OCR read in
pictures), as a signal like the others: a category's probability is its rules' `score` when one
matches, 0 when none does.

- `terms` match whole words after folding: case, width (full-width letters), accents, and common
  look-alikes (`c0caine`, Cyrillic `а`) are folded away on both sides.
- `patterns` are RE2 expressions (linear time, no backtracking), run on the text folded for case,
  width and accents (not look-alikes, so that digits stay digits). They are compiled when the
  policy loads: an invalid one refuses the policy.
- `detectors` find ways to leave the platform: phone numbers (Google's libphonenumber, for the
  policy's regions), e-mail addresses, URLs and domains outside the allow-list (suffixes checked
  against the Public Suffix List that tldextract bundles), and messaging handles.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from functools import cache

DETECTORS = ("phone_number", "email", "url", "messaging_handle")
MIN_PHONE_DIGITS = 6  # fewer digits than any number of the regions a policy may name
MAX_TEXT = 4096  # characters of one text the rules read: a title (at most as long) or a picture's text
# Look-alikes folded for terms, after case and width: digits and symbols for letters (a digit
# beside a letter, a symbol between two: `c0caine`, `h3r0in`, `co$caine`, never `2024` or `@deals`),
# and the Cyrillic and Greek letters drawn like Latin ones.
DIGIT_LOOKALIKES = {"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b"}
SYMBOL_LOOKALIKES = {"@": "a", "$": "s", "!": "i", "|": "i"}
LETTER_LOOKALIKES = str.maketrans(
    {
        "а": "a", "в": "b", "е": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c", "т": "t", "у": "y", "х": "x",
        "і": "i", "ј": "j", "ѕ": "s", "ԁ": "d", "α": "a", "β": "b", "ε": "e", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p",
        "τ": "t", "υ": "u", "χ": "x", "。": ".", "l": "i", "ı": "i", "ӏ": "i", "һ": "h", "ɑ": "a", "ϲ": "c",
    }
)  # fmt: skip
INVISIBLE = ("Mn", "Me", "Cf")  # marks, and format characters (zero-width spaces, soft hyphens, joiners)
BLANK_LETTERS = {"\u3164", "\uffa0", "\u115f", "\u1160", "\u2800"}  # letters that draw nothing (Hangul fillers, a blank Braille cell)
EMAIL = r"[a-z0-9._%+\-]+@[a-z0-9\-]+(?:\.[a-z0-9\-]+)*\.[a-z]{2,}"
# A host: a scheme or `www.` makes it a URL whatever its suffix; a bare name needs a suffix sellers
# use for shops and links (BARE_HOST_SUFFIXES), so that `Mr.Coffee` or `README.md` is not a link.
URL = r"(?:https?://|www\.)[^\s]+|[a-z0-9](?:[a-z0-9\-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9\-]*[a-z0-9])?)+(?:/[^\s]*)?"
BARE_HOST_SUFFIXES = frozenset(
    "com net org info biz co io me xyz shop store online site top club app link live vip ly to cc tk ml ga cf gq "
    "ru cn in uk de fr es it br mx us ca au nl pl jp kr tw hk sg my id ph vn th tr ua gg ee gl gd gy tv at su ai eu".split()
)
# Apps whose names are not everyday words, and those that are (`line`, `signal`, `snap`...): a
# handle after one of the latter counts only at the start of a line or after `id`.
APPS = r"whats\s?app|wa\.me|telegram|t\.me|we\s?chat|weixin|viber|skype|insta(?:gram)?|snapchat|messenger|kakao(?:talk)?|zalo|discord"
WORD_APPS = r"line|signal|snap|ig|fb|tg|kik"
SEPARATOR = r"(?:[:：=>@]|->|→|➡)"  # an emoji's variation selector is folded away
HANDLE = r"[@+]?[a-z0-9][a-z0-9._\-]{2,}"
MARKED_HANDLE = (
    r"(?:[@+][a-z0-9][a-z0-9._\-]{2,}|[a-z0-9._\-]*\d[a-z0-9._\-]*[a-z0-9_\-][a-z0-9._\-]*|[a-z0-9._\-]{2,}\d)"  # with a digit, or @ / +
)
# An app's name, then a handle or number after a separator (`whatsapp: +44...`, `wechat id: shop88`),
# or one that looks like a handle after a space (`telegram @deals`, `wechat shop8888`); or an
# invitation to reach the seller on an app (`dm me on insta`).
MESSAGING_HANDLE = (
    rf"\b(?:{APPS})\b\s*(?:(?:id|number|no\.?)\s*{SEPARATOR}?|{SEPARATOR})\s*{HANDLE}"
    rf"|\b(?:{APPS})\b[\s\-]+{MARKED_HANDLE}"
    rf"|(?m:^)\s*(?:{WORD_APPS})\s*(?:id)?\s*{SEPARATOR}\s*{HANDLE}|\b(?:{WORD_APPS})\s+id\s*{SEPARATOR}?\s*{HANDLE}"
    rf"|\b(?:dm|message|text|msg|contact|call|add|find|reach|follow)\s+(?:me|us)\s+(?:on|at|via|in)\s+(?:{APPS}|{WORD_APPS})\b"
)


@dataclass(frozen=True)
class RuleMatch:
    category: str
    rule: str  # `term`, `pattern`, or a detector's name
    text: str  # as written in the source


def fold(text: str, lookalikes: bool = True, digits: bool = True) -> tuple[str, list[int]]:
    """`text` folded for case, width and accents (and look-alikes: letters, symbols, and with
    `digits` digits), invisible characters dropped, and for each folded character the index of
    the character of `text` it came from."""
    chars, origin = [], []
    for i, char in enumerate(text):
        decomposed = unicodedata.normalize("NFKD", char)
        plain = "".join(c for c in decomposed if unicodedata.category(c) not in INVISIBLE and c not in BLANK_LETTERS).casefold()
        for c in plain.translate(LETTER_LOOKALIKES) if lookalikes else plain.replace("。", "."):
            chars.append(c)
            origin.append(i)
    if lookalikes:
        for k, c in enumerate(chars):
            before = chars[k - 1] if k else ""
            after = chars[k + 1] if k + 1 < len(chars) else ""
            if digits and c in DIGIT_LOOKALIKES and (before.isalpha() or after.isalpha()):
                chars[k] = DIGIT_LOOKALIKES[c]
            elif c in SYMBOL_LOOKALIKES and before.isalnum() and after.isalnum():
                chars[k] = SYMBOL_LOOKALIKES[c]
    return "".join(chars), origin


def compile_pattern(pattern: str):
    """An RE2 expression, case-insensitive; ValueError when RE2 cannot take it."""
    import re2

    try:
        return re2.compile(f"(?i:{pattern})")
    except re2.error as e:
        raise ValueError(f"invalid regular expression {pattern!r}: {e}") from None


def terms_pattern(terms: list[str], digits: bool = True) -> str:
    """One expression matching any of `terms` as whole words (group 1), after folding; the words of
    a term may be apart by any run of spaces and punctuation (`crystal-meth`, across OCR lines).
    Without `digits` (digits not read as letters) a digit also ends a word (`heroin247`)."""
    import re2

    phrases = set()
    for term in terms:
        words = "".join(c if c.isalnum() else " " for c in fold(term, digits=digits)[0]).split()
        if words:
            phrases.add(r"[^\pL\pN]+".join(re2.escape(w) for w in words))
    alternatives = sorted(phrases, key=len, reverse=True)
    edge = r"[^\pL\pN]" if digits else r"[^\pL]"
    return rf"(?:^|{edge})(" + "|".join(alternatives) + rf")(?:$|{edge})"


class TextRules:
    """Every category's rules of a policy, compiled. `match(text)` lists what matched in its
    first MAX_TEXT characters."""

    def __init__(self, policy):
        self.categories = [name for name, category in policy.categories.items() if category.text_rules is not None]
        self.scores = {name: policy.categories[name].text_rules.score for name in self.categories}
        self.regions = list(policy.text_detectors.phone_regions)
        self.allowed = [d.lower().strip(".") for d in policy.text_detectors.allowed_domains]
        # (category, rule name, compiled expression or None for a detector, the group that is the
        # match, the folding it reads: look-alikes, and digits as letters)
        self.rules = []
        for name in self.categories:
            rules = policy.categories[name].text_rules
            if rules.terms:  # digits read as letters (`c0caine`), and digits as word ends (`heroin247`)
                self.rules.append((name, "term", compile_pattern(terms_pattern(rules.terms)), 1, (True, True)))
                self.rules.append((name, "term", compile_pattern(terms_pattern(rules.terms, digits=False)), 1, (True, False)))
            self.rules += [(name, "pattern", compile_pattern(p), 0, (False, False)) for p in rules.patterns]
            self.rules += [(name, detector, None, 0, (False, False)) for detector in rules.detectors]

    def match(self, text: str) -> list[RuleMatch]:
        text = (text or "")[:MAX_TEXT]
        if not text.strip():
            return []
        folded = {mode: fold(text, *mode) for mode in ((True, True), (True, False), (False, False))}
        found, detected = [], {}
        for category, rule, expression, group, mode in self.rules:
            if expression is None:
                if rule not in detected:
                    detected[rule] = self._detect(rule, text, *folded[mode])
                found += [RuleMatch(category, rule, hit) for hit in detected[rule]]
                continue
            plain, origin = folded[mode]
            for m in expression.finditer(plain):
                start, end = m.span(group)
                if end > start:
                    found.append(RuleMatch(category, rule, text[origin[start] : origin[end - 1] + 1]))
        return list(dict.fromkeys(found))

    def probabilities(self, matches: list[RuleMatch]) -> list[float]:
        """Each rule-bearing category's probability (in `categories`' order) given `matches`."""
        hit = {m.category for m in matches}
        return [self.scores[name] if name in hit else 0.0 for name in self.categories]

    def _detect(self, detector: str, text: str, plain: str, origin: list[int]) -> list[str]:
        if detector == "phone_number":
            return _phone_numbers(unicodedata.normalize("NFKC", text), self.regions)
        spans = [m.span() for m in _expression(detector).finditer(plain)]
        if detector == "url":
            emails = [m.span() for m in _expression("email").finditer(plain)]
            spans = [
                (s, e)
                for s, e in spans
                if not any(a <= s < b for a, b in emails) and self._off_platform(plain[s:e], _written(text, origin, s, e))
            ]
        return [text[origin[s] : origin[e - 1] + 1].rstrip(".,;:!?)") for s, e in spans if e > s]

    def _off_platform(self, url: str, as_written: str) -> bool:
        """Whether `url` (folded; `as_written` in the source) names a real host outside the allow-list."""
        from urllib.parse import urlsplit

        written = url.replace("\\", "/")  # browsers read a backslash in a link as a slash
        explicit = written.startswith(("http://", "https://", "www."))
        try:
            host = (urlsplit(written if "://" in written else "//" + written).hostname or "").strip(".")
        except ValueError:  # not a URL after all (an unclosed IPv6 bracket, ...)
            return False
        parts = _domain_parts(host)
        if not host or not parts.suffix or not any(c.isalpha() for c in parts.domain):
            return explicit and bool(host)
        bare = written == url and "/" not in written and not explicit
        if bare and parts.suffix.rsplit(".", 1)[-1] not in BARE_HOST_SUFFIXES:
            return False
        last = as_written.rsplit(".", 1)[-1]
        if bare and last[:1].isupper() and last[1:].islower():  # `Hot sale.Shop now`: a sentence, not a host
            return False
        return not any(host == a or host.endswith("." + a) for a in self.allowed)


def _written(text: str, origin: list[int], start: int, end: int) -> str:
    """The source text of folded characters `start` .. `end`."""
    return text[origin[start] : origin[end - 1] + 1]


@cache
def _expression(detector: str):
    return compile_pattern({"email": EMAIL, "url": URL, "messaging_handle": MESSAGING_HANDLE}[detector])


@cache
def _extractor():
    import tldextract

    return tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)  # the bundled snapshot: never fetched


def _domain_parts(host: str):
    return _extractor()(host)


def _phone_numbers(text: str, regions: list[str]) -> list[str]:
    import phonenumbers

    if sum(c.isdigit() for c in text) < MIN_PHONE_DIGITS:  # the parser is slow: most text holds no number
        return []
    found = {}
    for region in regions:
        for m in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID):
            found.setdefault(m.start, m.raw_string)
    return [found[start] for start in sorted(found)]
