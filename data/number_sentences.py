"""Sentences around numbers, in English, French, German, Spanish and Italian, for translation.

A sentence is a template filled with numbers: an opener (none, "Yesterday,", "In {year},",
"On {date},"), then `clauses` clauses joined by connectors ("and", "but", "because", "while"),
each clause holding one or two numbers of a kind:

    count     a cardinal before a noun        "two hundred and five passengers boarded the train"
    ordinal   an ordinal before a noun        "the thirty-second runner crossed the finish line"
    year      a year                          "the bridge was built in eighteen fifty-one"
    money     an amount in a currency         "the ticket cost forty-five euro, twenty cents"
    date      day, month and year (openers)   "On the third of May nineteen eighty-seven,"

Every number is written out by `num2words` in each language (to="cardinal", "ordinal",
"year", "currency"), so a translation must turn "three hundred and twelve" into "trois cent
douze", "dreihundertzwölf", "trescientos doce" and "trecentododici"; German moves the verb to
the end of a clause after "weil" / "während", and before the subject after an opener ("Im
Jahr ... stiegen zweihundert Fahrgäste in den Zug").

Splits. A template (opener, clause, connector, clause, ...) belongs to one split, and so does
each value of a count, ordinal, year or currency amount (days of the month, months and cents
are shared): a hash of (split_seed, template) and of (split_seed, kind, value) puts 10% of them
in test, 5% in val, the rest in train. A test sentence is a test template filled with test
numbers: neither its frame nor any of its held-out numbers was seen in training.

Several target languages: each pair draws its target language, and the source begins with the
token for it, `<2fr>` (Johnson et al. 2017), so one model translates into all of them.

Sizing. The task is meant to end mid-range after the default run (experiments/configs/
transformer.py:sentences, 2,000 steps), so that better and worse settings can both show. Into
French, German and Spanish with counts and amounts below 100,000 the default Transformer reached
test BLEU 85.7, near the ceiling; Italian as a fourth target and counts and amounts up to a
million (data.tgt_lang, data.max_number) brought it to 72.4 (2-core AMD EPYC, other jobs at load
8-10). data.clauses and data.train_size are the other knobs.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import zlib

import numpy as np

LANGS = ("en", "fr", "de", "es", "it")
HELD_OUT = {"test": 0.10, "val": 0.05}   # fractions of templates and of numbers
ORDINALS = (2, 1000)                     # from 2: French "premier" agrees in gender
YEARS = (1100, 2100)
DAYS = 28


def lang_token(lang: str) -> str:
    return f"<2{lang}>"


# ----------------------------------------------------------------------------- phrases
# A clause per language: {slot} marks a number. German clauses are (subject, verb, rest), so
# that the verb can stand second (main clause), first (after an opener) or last (after a
# subordinating connector). {on}: the ordinal with German's weak -n ending (dative, accusative).

@dataclasses.dataclass(frozen=True)
class Clause:
    en: str
    fr: str
    es: str
    it: str
    de: tuple[str, str, str]

    def slots(self) -> list[str]:
        return re.findall(r"\{(\w+)\}", self.en)


CLAUSES = (
    Clause("{n} passengers boarded the train",
           "{n} passagers sont montés dans le train",
           "{n} pasajeros subieron al tren",
           "{n} passeggeri sono saliti sul treno",
           ("{n} Fahrgäste", "stiegen", "in den Zug")),
    Clause("the library bought {n} books",
           "la bibliothèque a acheté {n} livres",
           "la biblioteca compró {n} libros",
           "la biblioteca ha comprato {n} libri",
           ("die Bibliothek", "kaufte", "{n} Bücher")),
    Clause("the gardeners planted {n} trees",
           "les jardiniers ont planté {n} arbres",
           "los jardineros plantaron {n} árboles",
           "i giardinieri hanno piantato {n} alberi",
           ("die Gärtner", "pflanzten", "{n} Bäume")),
    Clause("the museum welcomed {n} visitors",
           "le musée a accueilli {n} visiteurs",
           "el museo recibió {n} visitantes",
           "il museo ha accolto {n} visitatori",
           ("das Museum", "empfing", "{n} Besucher")),
    Clause("{n} students passed the exam",
           "{n} étudiants ont réussi l'examen",
           "{n} estudiantes aprobaron el examen",
           "{n} studenti hanno superato l'esame",
           ("{n} Studenten", "bestanden", "die Prüfung")),
    Clause("the truck drove {n} kilometres",
           "le camion a parcouru {n} kilomètres",
           "el camión recorrió {n} kilómetros",
           "il camion ha percorso {n} chilometri",
           ("der Lastwagen", "fuhr", "{n} Kilometer")),
    Clause("the scientists counted {n} birds",
           "les scientifiques ont compté {n} oiseaux",
           "los científicos contaron {n} pájaros",
           "gli scienziati hanno contato {n} uccelli",
           ("die Wissenschaftler", "zählten", "{n} Vögel")),
    Clause("the factory produced {n} vehicles",
           "l'usine a produit {n} véhicules",
           "la fábrica produjo {n} vehículos",
           "la fabbrica ha prodotto {n} veicoli",
           ("die Fabrik", "produzierte", "{n} Fahrzeuge")),
    Clause("the {o} runner crossed the finish line",
           "le {o} coureur a franchi la ligne d'arrivée",
           "el {o} corredor cruzó la línea de meta",
           "il {o} corridore ha tagliato il traguardo",
           ("der {o} Läufer", "überquerte", "die Ziellinie")),
    Clause("the king's {o} son inherited the castle",
           "le {o} fils du roi a hérité du château",
           "el {o} hijo del rey heredó el castillo",
           "il {o} figlio del re ha ereditato il castello",
           ("der {o} Sohn des Königs", "erbte", "das Schloss")),
    Clause("our team took {o} place",
           "notre équipe a pris la {o} place",
           "nuestro equipo ocupó el {o} puesto",
           "la nostra squadra ha conquistato il {o} posto",
           ("unser Team", "belegte", "den {on} Platz")),
    Clause("the {o} concert of the festival delighted the audience",
           "le {o} concert du festival a enchanté le public",
           "el {o} concierto del festival encantó al público",
           "il {o} concerto del festival ha entusiasmato il pubblico",
           ("das {o} Konzert des Festivals", "begeisterte", "das Publikum")),
    Clause("the {o} floor of the tower remained empty",
           "le {o} étage de la tour est resté vide",
           "el {o} piso de la torre quedó vacío",
           "il {o} piano della torre è rimasto vuoto",
           ("der {o} Stock des Turms", "blieb", "leer")),
    Clause("the bridge was built in {y}",
           "le pont a été construit en {y}",
           "el puente fue construido en {y}",
           "il ponte è stato costruito nel {y}",
           ("die Brücke", "wurde", "im Jahr {y} gebaut")),
    Clause("the company was founded in {y}",
           "l'entreprise a été fondée en {y}",
           "la empresa fue fundada en {y}",
           "l'azienda è stata fondata nel {y}",
           ("die Firma", "wurde", "im Jahr {y} gegründet")),
    Clause("my grandmother moved to the city in {y}",
           "ma grand-mère a déménagé en ville en {y}",
           "mi abuela se mudó a la ciudad en {y}",
           "mia nonna si è trasferita in città nel {y}",
           ("meine Großmutter", "zog", "im Jahr {y} in die Stadt")),
    Clause("the storm destroyed the harbour in {y}",
           "la tempête a détruit le port en {y}",
           "la tormenta destruyó el puerto en {y}",
           "la tempesta ha distrutto il porto nel {y}",
           ("der Sturm", "zerstörte", "im Jahr {y} den Hafen")),
    Clause("the ticket cost {m}",
           "le billet coûtait {m}",
           "el billete costaba {m}",
           "il biglietto costava {m}",
           ("die Fahrkarte", "kostete", "{m}")),
    Clause("my brother earned {m}",
           "mon frère a gagné {m}",
           "mi hermano ganó {m}",
           "mio fratello ha guadagnato {m}",
           ("mein Bruder", "verdiente", "{m}")),
    Clause("the city invested {m} in the new school",
           "la ville a investi {m} dans la nouvelle école",
           "la ciudad invirtió {m} en la nueva escuela",
           "la città ha investito {m} nella nuova scuola",
           ("die Stadt", "investierte", "{m} in die neue Schule")),
    Clause("the painting was sold for {m}",
           "le tableau a été vendu pour {m}",
           "el cuadro se vendió por {m}",
           "il quadro è stato venduto per {m}",
           ("das Gemälde", "wurde", "für {m} verkauft")),
    Clause("the shop sold {n} umbrellas for {m}",
           "le magasin a vendu {n} parapluies pour {m}",
           "la tienda vendió {n} paraguas por {m}",
           "il negozio ha venduto {n} ombrelli per {m}",
           ("der Laden", "verkaufte", "{n} Regenschirme für {m}")),
    Clause("{n} soldiers came home in {y}",
           "{n} soldats sont rentrés chez eux en {y}",
           "{n} soldados volvieron a casa en {y}",
           "{n} soldati sono tornati a casa nel {y}",
           ("{n} Soldaten", "kamen", "im Jahr {y} nach Hause")),
    Clause("the {o} ship carried {n} sailors",
           "le {o} navire transportait {n} marins",
           "el {o} barco llevaba {n} marineros",
           "il {o} vascello trasportava {n} marinai",
           ("das {o} Schiff", "trug", "{n} Seeleute")),
)

# (label, {lang: text}, German verb position in the clause that follows: main | first)
OPENERS = (
    ("none", dict(en="", fr="", es="", it="", de=""), "main"),
    ("yesterday", dict(en="Yesterday, ", fr="Hier, ", es="Ayer, ", it="Ieri, ",
                       de="Gestern "), "first"),
    ("year", dict(en="In {y}, ", fr="En {y}, ", es="En {y}, ", it="Nel {y}, ",
                  de="Im Jahr {y} "), "first"),
    ("date", dict(en="On the {d} of {month} {y}, ", fr="Le {d} {month} {y}, ",
                  es="El {d} de {month} de {y}, ", it="Il {d} {month} {y}, ",
                  de="Am {d} {month} {y} "), "first"),
)

# (label, {lang: text}, German verb position in the clause that follows: main | last)
CONNECTORS = (
    ("and", dict(en=" and ", fr=" et ", es=" y ", it=" e ", de=" und "), "main"),
    ("but", dict(en=", but ", fr=", mais ", es=", pero ", it=", ma ", de=", aber "), "main"),
    ("because", dict(en=" because ", fr=" parce que ", es=" porque ", it=" perché ",
                     de=", weil "), "last"),
    ("while", dict(en=" while ", fr=" alors que ", es=" mientras ", it=" mentre ",
                   de=", während "), "last"),
)

MONTHS = dict(
    en="January February March April May June July August September October November "
       "December",
    fr="janvier février mars avril mai juin juillet août septembre octobre novembre décembre",
    de="Januar Februar März April Mai Juni Juli August September Oktober November Dezember",
    es="enero febrero marzo abril mayo junio julio agosto septiembre octubre noviembre "
       "diciembre",
    it="gennaio febbraio marzo aprile maggio giugno luglio agosto settembre ottobre novembre "
       "dicembre")
CURRENCIES = ("EUR", "USD", "GBP")


# ----------------------------------------------------------------------------- numbers


@functools.lru_cache(maxsize=None)   # num2words takes about 0.4 ms a call
def cardinal(n: int, lang: str) -> str:
    """num2words before a masculine plural noun: Spanish and German shorten a final one
    ("veintiún pasajeros", "hunderteins" -> "hundertein Fahrgäste")."""
    from num2words import num2words
    words = num2words(n, lang=lang)
    if lang == "es":
        words = re.sub(r"veintiuno$", "veintiún", words)
        words = re.sub(r"\buno$", "un", words)
    elif lang == "de":
        words = re.sub(r"eins$", "ein", words)
    return words


@functools.lru_cache(maxsize=None)
def ordinal(n: int, lang: str, weak_n: bool = False) -> str:
    """num2words(to="ordinal") before a masculine noun: Spanish drops the -o of primero and
    tercero ("el tercer corredor"); weak_n adds German's -n ("den dritten Platz")."""
    from num2words import num2words
    words = num2words(n, lang=lang, to="ordinal")
    if lang == "es":
        words = re.sub(r"(primer|tercer)o$", r"\1", words)
    if lang == "de" and weak_n:
        words += "n"
    return words


@functools.lru_cache(maxsize=None)
def year(n: int, lang: str) -> str:
    from num2words import num2words
    return num2words(n, lang=lang, to="year")


@functools.lru_cache(maxsize=None)
def money(amount: int, cents: int, currency: str, lang: str) -> str:
    from num2words import num2words
    return num2words(amount + cents / 100, lang=lang, to="currency", currency=currency)


def date(day: int, month: int, y: int, lang: str) -> dict[str, str]:
    """The day as each language writes it in a date: English "the third of", French "trois"
    (but "premier"), German "dritten" (dative), Spanish "tres", Italian "tre" (but "primo")."""
    from num2words import num2words
    if lang == "en":
        d = num2words(day, lang="en", to="ordinal")
    elif lang == "de":
        d = num2words(day, lang="de", to="ordinal") + "n"
    elif lang in ("fr", "it") and day == 1:
        d = {"fr": "premier", "it": "primo"}[lang]
    else:
        d = num2words(day, lang=lang)
    return dict(d=d, month=MONTHS[lang].split()[month - 1], y=year(y, lang))


# ----------------------------------------------------------------------------- splits


def _unit(*key) -> float:
    """A stable number in [0, 1) for key (the same in every process and Python run)."""
    return zlib.crc32("/".join(map(str, key)).encode()) / 2 ** 32


def split_of(seed: int, *key) -> str:
    u = _unit(seed, *key)
    if u < HELD_OUT["test"]:
        return "test"
    return "val" if u < HELD_OUT["test"] + HELD_OUT["val"] else "train"


@dataclasses.dataclass
class Sentence:
    template: tuple              # (opener, clause, connector, clause, ...) indices
    numbers: dict                # kind -> [held-out values drawn]
    lang: str                    # the target language
    src: str
    tgt: str


class Generator:
    """Draws the sentences of one split: a template of the split, filled with its numbers."""

    def __init__(self, split: str, seed: int, clauses: int = 2, max_number: int = 100_000):
        if not 1 <= clauses <= len(CLAUSES):
            raise ValueError(f"data.clauses must be between 1 and {len(CLAUSES)}, got {clauses}")
        if max_number < 100:
            raise ValueError(f"data.max_number must be >= 100 for sentences, got {max_number}")
        self.split, self.seed, self.clauses = split, seed, clauses
        self.ranges = dict(n=(2, max_number), o=ORDINALS, y=YEARS, m=(1, max_number))

    def number(self, rng, kind: str) -> int:
        lo, hi = self.ranges[kind]
        kind = "n" if kind == "m" else kind    # amounts and counts share one split
        while True:
            v = int(rng.integers(lo, hi))
            if split_of(self.seed, kind, v) == self.split:
                return v

    def template(self, rng) -> tuple:
        while True:
            parts = [int(rng.integers(len(OPENERS)))]
            chosen = rng.choice(len(CLAUSES), self.clauses, replace=False)
            for i, c in enumerate(chosen):
                if i:
                    parts.append(int(rng.integers(len(CONNECTORS))))
                parts.append(int(c))
            t = tuple(parts)
            if split_of(self.seed, "template", *t) == self.split:
                return t

    def fill(self, rng, slots: list[str], numbers: dict) -> dict:
        """Values for the slots of one clause or opener: {"n": 212, "y": 1987, "m": (amount,
        cents, currency), "date": (day, month)}; the held-out ones also go to numbers[kind]."""
        filled = {}
        for slot in slots:
            if slot in ("n", "o", "y", "m"):
                v = self.number(rng, slot)
                numbers.setdefault("n" if slot == "m" else slot, []).append(v)
                filled[slot] = v if slot != "m" else (
                    v, int(rng.integers(1, 100)), CURRENCIES[int(rng.integers(len(CURRENCIES)))])
            elif slot in ("d", "month"):
                filled.setdefault("date", (int(rng.integers(1, DAYS + 1)),
                                           int(rng.integers(1, 13))))
        return filled

    def draw(self, rng, src_lang: str, tgt_langs: tuple[str, ...]) -> Sentence:
        t = self.template(rng)
        lang = tgt_langs[int(rng.integers(len(tgt_langs)))]
        opener = OPENERS[t[0]]
        clauses = [CLAUSES[c] for c in t[1::2]]
        connectors = [CONNECTORS[c] for c in t[2::2]]
        numbers: dict[str, list[int]] = {}
        values = [self.fill(rng, slots, numbers) for slots in
                  [re.findall(r"\{(\w+)\}", opener[1]["en"])] + [c.slots() for c in clauses]]
        text = {lang_: render(lang_, opener, clauses, connectors, values)
                for lang_ in (src_lang, lang)}
        return Sentence(t, numbers, lang, f"{lang_token(lang)} {text[src_lang]}", text[lang])


def words(lang: str, filled: dict) -> dict[str, str]:
    """The slots of one clause (or opener) written out in lang."""
    out = {}
    for slot, v in filled.items():
        if slot == "n":
            out["n"] = cardinal(v, lang)
        elif slot == "o":
            out["o"], out["on"] = ordinal(v, lang), ordinal(v, lang, weak_n=True)
        elif slot == "m":
            out["m"] = money(*v, lang)
        elif slot == "date":
            out.update(date(*v, filled["y"], lang))
    if "y" in filled:
        out["y"] = year(filled["y"], lang)
    return out


def render(lang: str, opener, clauses, connectors, values) -> str:
    """The sentence in lang: opener, clauses and connectors, German verbs placed as each
    position asks, Italian "il" elided before a vowel ("l'ottavo"); capitalised, with a full
    stop."""
    text = opener[1][lang].format(**words(lang, values[0]))
    order = opener[2]
    for i, clause in enumerate(clauses):
        if i:
            _, joins, order = connectors[i - 1]
            text += joins[lang]
        slots = words(lang, values[i + 1])
        if lang == "de":
            s, v, r = (p.format(**slots) for p in clause.de)
            text += {"main": f"{s} {v} {r}", "first": f"{v} {s} {r}",
                     "last": f"{s} {r} {v}"}[order]
        else:
            text += getattr(clause, lang).format(**slots)
        order = "main"
    if lang == "it":
        text = re.sub(r"\b([Ii])l ([aeiou])", lambda m: f"{'L' if m[1] == 'I' else 'l'}'{m[2]}",
                      text)
    return text[:1].upper() + text[1:] + "."


def sentences(split: str, size: int, seed: int, src_lang: str, tgt_langs: tuple[str, ...],
              clauses: int = 2, max_number: int = 100_000) -> list[Sentence]:
    """`size` sentences of `split`, the same for the same arguments."""
    for lang in (src_lang, *tgt_langs):
        if lang not in LANGS:
            raise ValueError(f"the sentences are written in {', '.join(LANGS)}, not {lang!r}")
    if src_lang in tgt_langs:
        raise ValueError(f"the source language {src_lang!r} is also a target ({tgt_langs})")
    gen = Generator(split, seed, clauses, max_number)
    rng = np.random.default_rng([seed, ("train", "val", "test").index(split)])
    return [gen.draw(rng, src_lang, tgt_langs) for _ in range(size)]
