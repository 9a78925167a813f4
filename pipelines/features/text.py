"""Text normalization and tokenization: the one implementation used by training AND scoring.

The trained model stores a ``TextConfig``; the logged pyfunc re-creates the same tokenizer from it,
so scoring cannot drift from training.
"""

from __future__ import annotations

import html
import re
import unicodedata
from dataclasses import asdict, dataclass
from functools import lru_cache

# Spanish and Portuguese function words that carry no category signal. Shipped with the
# project (nothing is downloaded at run time). Product words ("para", "con" can matter less
# than brand/model tokens) are the usual NLTK-style stopwords, trimmed to short function words.
STOPWORDS_ES = frozenset(
    """a al algo algunas algunos ante antes como con contra cual cuando de del desde donde durante
    e el ella ellas ellos en entre era es esa esas ese eso esos esta estas este esto estos fue ha hay
    la las le les lo los mas me mi mis mucho muy ni no nos o os otra otro para pero poco por que
    se sea ser si sin sobre su sus tambien te tiene todo tu tus un una uno unos y ya""".split()
)
STOPWORDS_PT = frozenset(
    """a ao aos as com como da das de dela dele deles do dos e ela ele eles em entre era essa esse
    esta este eu foi ha isso isto ja mais mas me mesmo meu minha muito na nao nas nem no nos o os
    ou para pela pelas pelo pelos por qual quando que se sem ser seu sua suas tambem te tem um uma
    umas uns voce""".split()
)
STOPWORDS = STOPWORDS_ES | STOPWORDS_PT

_TAG = re.compile(r"<[^>]{0,200}>")
_URL = re.compile(r"(?:https?://|www\.)\S+")
_NON_WORD = re.compile(r"[^0-9a-zñçãõáéíóúâêôàü]+")
_LONG_NUMBER = re.compile(r"^\d{5,}$")


@dataclass(frozen=True)
class TextConfig:
    lowercase: bool = True
    strip_accents: bool = True
    remove_stopwords: bool = True
    min_token_len: int = 1
    max_tokens: int = 48

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> TextConfig:
        return cls(**(d or {}))


def _strip_accents(text: str) -> str:
    # NFKD then drop combining marks; keeps ñ/ç distinct enough via their base letter.
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def normalize(title: str, cfg: TextConfig = TextConfig()) -> str:
    """Normalize a raw title: unescape HTML, drop markup and URLs, fold case/accents, collapse
    punctuation to spaces. Long pure numbers (codes, EANs) become a length-shaped token."""
    if not title:
        return ""
    text = html.unescape(title)
    text = _TAG.sub(" ", text)
    text = _URL.sub(" ", text)
    text = unicodedata.normalize("NFKC", text)
    if cfg.lowercase:
        text = text.lower()
    if cfg.strip_accents:
        text = _strip_accents(text)
    text = _NON_WORD.sub(" ", text)
    return " ".join(text.split())


def tokenize(title: str, cfg: TextConfig = TextConfig()) -> list[str]:
    tokens = []
    for tok in normalize(title, cfg).split():
        if cfg.remove_stopwords and tok in STOPWORDS:
            continue
        if len(tok) < cfg.min_token_len:
            continue
        if _LONG_NUMBER.match(tok):
            tok = f"<num{min(len(tok), 13)}>"
        tokens.append(tok)
        if len(tokens) >= cfg.max_tokens:
            break
    return tokens


@lru_cache(maxsize=8)
def tokenizer(cfg: TextConfig = TextConfig()):
    """Cached callable for hot loops."""
    return lambda title: tokenize(title, cfg)
