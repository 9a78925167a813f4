"""SYNTHETIC MeLi-like listings for the demo and unit tests (not real data).

Titles are composed from per-category product nouns, shared brands and attributes, in Spanish or
Portuguese, so a classifier can learn them but not trivially (shared words, noise words, typos).
Output is the DiploDatos jsonl(.gz) format. Deterministic by seed.
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

# category -> (spanish nouns, portuguese nouns)
CATEGORIES: dict[str, tuple[list[str], list[str]]] = {
    "CELLPHONES": (["celular", "smartphone", "telefono movil"], ["celular", "smartphone", "telefone"]),
    "CELLPHONE_COVERS": (["funda", "carcasa", "case"], ["capa", "capinha", "case"]),
    "NOTEBOOKS": (["notebook", "laptop", "portatil"], ["notebook", "laptop", "computador portatil"]),
    "HEADPHONES": (["auriculares", "audifonos", "headset"], ["fone de ouvido", "headphone", "headset"]),
    "SNEAKERS": (["zapatillas", "tenis", "zapatilla running"], ["tenis", "sapatenis", "tenis corrida"]),
    "WRISTWATCHES": (["reloj", "reloj pulsera", "smartwatch"], ["relogio", "relogio pulso", "smartwatch"]),
    "MOTORCYCLE_BATTERIES": (["bateria moto", "bateria gel moto"], ["bateria moto", "bateria de moto"]),
    "KITCHEN_KNIVES": (["cuchillo", "set cuchillos", "cuchilla"], ["faca", "jogo de facas", "cutelo"]),
    "BABY_STROLLERS": (["cochecito", "carrito bebe", "coche paseo"], ["carrinho de bebe", "carrinho"]),
    "ELECTRIC_DRILLS": (["taladro", "taladro percutor", "rotomartillo"], ["furadeira", "parafusadeira"]),
    "WASHING_MACHINES": (["lavarropas", "lavadora", "lavarropa"], ["maquina de lavar", "lavadora"]),
    "GUITARS": (["guitarra", "guitarra electrica", "guitarra criolla"], ["violao", "guitarra"]),
    "3D_PRINTERS": (["impresora 3d", "impresora tridimensional"], ["impressora 3d"]),
    "DOG_FOOD": (["alimento perro", "balanceado perro", "comida perros"], ["racao cachorro", "racao caes"]),
    "SUNGLASSES": (["anteojos de sol", "lentes de sol", "gafas sol"], ["oculos de sol", "oculos escuros"]),
    "VIDEO_GAME_CONSOLES": (["consola", "consola videojuegos"], ["console", "videogame"]),
}
BRANDS = [
    "samsung",
    "xiaomi",
    "apple",
    "lg",
    "sony",
    "philips",
    "bosch",
    "nike",
    "adidas",
    "generico",
    "motorola",
    "lenovo",
    "tramontina",
    "yamaha",
    "fender",
    "nintendo",
]
ATTRS_ES = [
    "nuevo",
    "original",
    "negro",
    "blanco",
    "oferta",
    "envio gratis",
    "garantia",
    "usado",
    "importado",
    "liquidacion",
    "pack x2",
    "modelo 2019",
    "full",
]
ATTRS_PT = [
    "novo",
    "original",
    "preto",
    "branco",
    "promocao",
    "frete gratis",
    "garantia",
    "usado",
    "importado",
    "kit 2",
    "lancamento",
    "modelo 2019",
]


def _typo(rng: random.Random, word: str) -> str:
    if len(word) < 5 or rng.random() > 0.08:
        return word
    i = rng.randrange(1, len(word) - 1)
    return word[:i] + word[i + 1 :]


def make_title(rng: random.Random, category: str, language: str) -> str:
    nouns_es, nouns_pt = CATEGORIES[category]
    nouns, attrs = (nouns_es, ATTRS_ES) if language == "spanish" else (nouns_pt, ATTRS_PT)
    parts = [rng.choice(nouns), rng.choice(BRANDS)]
    if rng.random() < 0.6:
        parts.append(f"{rng.choice('abcdefghxz').upper()}{rng.randint(1, 999)}")
    parts += rng.sample(attrs, k=rng.randint(0, 3))
    if rng.random() < 0.15:  # a confusing word from another category
        other = rng.choice(list(CATEGORIES))
        parts.append(rng.choice(CATEGORIES[other][0 if language == "spanish" else 1]))
    rng.shuffle(parts[1:])
    title = " ".join(_typo(rng, p) for p in parts)
    return title.title() if rng.random() < 0.7 else title


def generate_rows(n: int, seed: int = 0, portuguese_share: float = 0.3) -> list[dict]:
    rng = random.Random(seed)
    cats = sorted(CATEGORIES)
    rows = []
    for i in range(n):
        cat = cats[i % len(cats)] if i < len(cats) else rng.choice(cats)
        lang = "portuguese" if rng.random() < portuguese_share else "spanish"
        title = make_title(rng, cat, lang)
        rows.append(
            {
                "language": lang,
                "label_quality": "reliable" if rng.random() < 0.8 else "unreliable",
                "title": title,
                "category": cat,
                "split": "synthetic",
                "tokenized_title": title.lower().split(),
                "data": [],
                "target": cats.index(cat),
                "n_labels": len(cats),
                "size": n,
            }
        )
    return rows


# Broken lines mixed in with --dirty so the demo shows quarantine at work.
DIRTY_LINES = [
    '{"title": "Zapatillas Nike Air", "category": ',  # truncated JSON -> bad_json
    '{"language": "spanish", "label_quality": "reliable", "title": "", "category": "SNEAKERS"}',
    '["not", "an", "object"]',
    '{"language": "klingon", "label_quality": "reliable", "title": "Qapla Batleth", "category": "GUITARS"}',
]


def write_jsonl(path: str | Path, n: int, seed: int = 0, dirty: int = 0) -> Path:
    """Write n synthetic rows (plus ``dirty`` broken lines) as DiploDatos jsonl or jsonl.gz."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = generate_rows(n, seed)
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    rng = random.Random(seed + 1)
    for k in range(dirty):
        lines.insert(rng.randrange(len(lines) + 1), DIRTY_LINES[k % len(DIRTY_LINES)])
    data = ("\n".join(lines) + "\n").encode("utf-8")
    tmp = path.with_name(path.name + ".tmp")
    if path.name.endswith(".gz"):
        with gzip.open(tmp, "wb", compresslevel=5) as fh:
            fh.write(data)
    else:
        tmp.write_bytes(data)
    tmp.replace(path)
    return path
