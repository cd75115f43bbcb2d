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
# Look-alikes folded for terms, after case and width: digits and symbols for letters, and the
# Cyrillic and Greek letters drawn like Latin ones.
LOOKALIKES = str.maketrans(
    {
        "0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "@": "a", "$": "s",
        "а": "a", "в": "b", "е": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c", "т": "t", "у": "y", "х": "x",
        "і": "i", "ј": "j", "ѕ": "s", "ԁ": "d", "α": "a", "β": "b", "ε": "e", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p",
        "τ": "t", "υ": "u", "χ": "x",
    }
)  # fmt: skip
EMAIL = r"[a-z0-9._%+\-]+@[a-z0-9\-]+(?:\.[a-z0-9\-]+)*\.[a-z]{2,}"
# A host: a scheme or `www.` makes it a URL whatever its suffix; a bare name needs a public suffix.
URL = r"(?:https?://|www\.)[^\s/]+[^\s]*|[a-z0-9](?:[a-z0-9\-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9\-]*[a-z0-9])?)+(?:/[^\s]*)?"
# An app's name then a handle or number (`whatsapp: +44...`, `telegram @deals`, `wechat id shop88`),
# or an invitation to leave (`dm me on ...`). `line` and `signal` are words too: they need a separator.
MESSAGING_HANDLE = (
    r"\b(?:whats\s?app|wa\.me/|telegram|t\.me/|tg|we\s?chat|weixin|viber|kik|snap(?:chat)?|skype|insta(?:gram)?)\b"
    r"\s*(?:id|number|no\.?)?\s*[:：@/\-]?\s*[@+]?[a-z0-9][a-z0-9._\-]{2,}"
    r"|\b(?:line|signal|ig)\s*(?:id)?\s*[:：@]\s*[@+]?[a-z0-9][a-z0-9._\-]{2,}"
    r"|\b(?:dm|message|text|msg|contact|call|add|find|reach)\s+(?:me|us)\s+(?:on|at|via|in)\s+[a-z][a-z0-9._\-]+"
)


@dataclass(frozen=True)
class RuleMatch:
    category: str
    rule: str  # `term`, `pattern`, or a detector's name
    text: str  # as written in the source


def fold(text: str, lookalikes: bool = True) -> tuple[str, list[int]]:
    """`text` folded for case, width and accents (and look-alikes), and for each folded character
    the index of the character of `text` it came from."""
    folded, origin = [], []
    for i, char in enumerate(text):
        decomposed = unicodedata.normalize("NFKD", char)
        plain = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
        if lookalikes:
            plain = plain.translate(LOOKALIKES)
        folded.append(plain)
        origin += [i] * len(plain)
    return "".join(folded), origin


def compile_pattern(pattern: str):
    """An RE2 expression, case-insensitive; ValueError when RE2 cannot take it."""
    import re2

    try:
        return re2.compile(f"(?i:{pattern})")
    except re2.error as e:
        raise ValueError(f"invalid regular expression {pattern!r}: {e}") from None


def terms_pattern(terms: list[str]) -> str:
    """One expression matching any of `terms` as whole words, after folding."""
    import re2

    words = sorted({fold(t.strip())[0] for t in terms if t.strip()}, key=len, reverse=True)
    return r"(?:^|[^\pL\pN])(" + "|".join(re2.escape(w) for w in words) + r")(?:$|[^\pL\pN])"


class TextRules:
    """Every category's rules of a policy, compiled. `match(text)` lists what matched."""

    def __init__(self, policy):
        self.categories = [name for name, category in policy.categories.items() if category.text_rules is not None]
        self.scores = {name: policy.categories[name].text_rules.score for name in self.categories}
        self.regions = list(policy.text_detectors.phone_regions)
        self.allowed = [d.lower().strip(".") for d in policy.text_detectors.allowed_domains]
        self.rules = []  # (category, rule name, compiled expression or None for a detector, look-alikes folded)
        for name in self.categories:
            rules = policy.categories[name].text_rules
            if rules.terms:
                self.rules.append((name, "term", compile_pattern(terms_pattern(rules.terms)), True))
            self.rules += [(name, "pattern", compile_pattern(p), False) for p in rules.patterns]
            self.rules += [(name, detector, None, False) for detector in rules.detectors]

    def match(self, text: str) -> list[RuleMatch]:
        if not text or not text.strip():
            return []
        folded = {True: fold(text, True), False: fold(text, False)}
        found, detected = [], {}
        for category, rule, expression, lookalikes in self.rules:
            if expression is None:
                if rule not in detected:
                    detected[rule] = self._detect(rule, text, *folded[False])
                found += [RuleMatch(category, rule, hit) for hit in detected[rule]]
                continue
            plain, origin = folded[lookalikes]
            for m in expression.finditer(plain):
                start, end = m.span(m.lastindex or 0)
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
            spans = [(s, e) for s, e in spans if not any(a <= s < b for a, b in emails) and self._off_platform(plain[s:e])]
        return [text[origin[s] : origin[e - 1] + 1].rstrip(".,;:!?)") for s, e in spans if e > s]

    def _off_platform(self, url: str) -> bool:
        """Whether `url` names a real host outside the allow-list."""
        host = url.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0].strip(".").lower()
        parts = _domain_parts(host)
        if not parts.suffix or not any(c.isalpha() for c in parts.domain):
            return url.startswith(("http", "www.")) and bool(host)
        registered = f"{parts.domain}.{parts.suffix}"
        return not any(registered == a or host == a or host.endswith("." + a) for a in self.allowed)


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

    found = {}
    for region in regions:
        for m in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID):
            found.setdefault(m.start, m.raw_string)
    return [found[start] for start in sorted(found)]
