"""Fresh benchmark texts: unique English-like sentences of 8–40 words, reproducible by seed."""

from __future__ import annotations

import json
import random
from pathlib import Path

MIN_WORDS = 8
MAX_WORDS = 40

# Common words of varied length, so sentences tokenize like ordinary prose (most words are
# one token, some split into word pieces).
_WORDS = """
the a an of to in for on with at by from about into over after under between through time
year people way day man woman child world life hand part place case week company system
program question work government number night point home water room mother area money
story fact month lot right study book eye job word business issue side kind head house
service friend father power hour game line end member law car city community name
president team minute idea kid body information back parent face others level office door
health person art war history party result change morning reason research girl guy moment
air teacher force education foot boy age policy music market sense nation plan college
interest death experience effect class control care field development role effort rate
heart drug show leader light voice wife police mind price report decision son view
relationship town road arm difference value building action model season society tax
director position player record paper space ground form event official matter center
couple site project activity star table need court oil situation cost industry figure
street image phase television box sound period analysis computer structure treatment
patient is was are were be have has had do does did say said make made go went take took
see saw come came know knew get got give gave find found think thought tell told become
became leave left feel felt bring brought begin began keep kept hold held write wrote
stand stood hear heard let mean set meet run pay sit speak lie lead read grow lose fall
send build understand draw break spend cut rise drive buy wear choose seek throw catch
deal win forget good new first last long great little own other old big high different
small large next early young important few public bad same able quiet remarkable uncertain
extraordinary beautiful careful dangerous electric financial historical international
medical nuclear political professional scientific traditional wonderful slowly quickly
carefully really almost always never often sometimes together however although because
while before since unless whether perhaps nevertheless meanwhile afterwards approximately
unfortunately photosynthesis microprocessor neuroscience cryptocurrency infrastructure
biodiversity
"""
VOCABULARY = _WORDS.split()


def sentence(rng: random.Random) -> str:
    """One sentence of 8–40 words drawn from the vocabulary."""
    count = rng.randint(MIN_WORDS, MAX_WORDS)
    words = rng.choices(VOCABULARY, k=count)
    return " ".join(words).capitalize() + "."


class TextSource:
    """Hands out texts never handed out before (by this source), reproducibly from a seed."""

    def __init__(self, seed: int = 20251128) -> None:
        self._rng = random.Random(seed)
        self._seen: set[str] = set()

    def take(self, count: int) -> list[str]:
        texts: list[str] = []
        while len(texts) < count:
            text = sentence(self._rng)
            # Collisions are astronomically rare at 8+ words, but "fresh" is a promise.
            if text not in self._seen:
                self._seen.add(text)
                texts.append(text)
        return texts


def json_string_body(text: str) -> str:
    """The text as the inside of a JSON string literal (quotes and escapes, no surrounding ")."""
    return json.dumps(text, ensure_ascii=False)[1:-1]


def write_pool(texts: list[str], path: Path) -> Path:
    """One JSON-escaped text per line: the pool the wrk script builds request bodies from."""
    path.write_text("".join(json_string_body(text) + "\n" for text in texts), encoding="utf-8")
    return path
