"""Synthetic French product listings for the zero-setup demo (the Rakuten data may not be
redistributed). Written in the flat layout (``products.csv`` + ``images/``), so every command
reads them like the real sample. They are easy on purpose: they show the system working, not
the models' accuracy, which is measured on the real data only.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

from PIL import Image, ImageDraw

# prdtypecode -> (nouns, details): a few words a seller of that category would use
VOCABULARY: dict[int, tuple[list[str], list[str]]] = {
    10: (["Roman", "Livre ancien", "Essai", "Biographie"], ["édition originale", "reliure cuir", "auteur allemand"]),
    40: (["Jeu PC", "Jeu PS4", "Jeu Xbox One", "Jeu Nintendo Switch"], ["version française", "aventure", "course"]),
    50: (["Manette", "Câble de charge", "Housse console", "Volant gaming"], ["sans fil", "compatible PS4", "USB"]),
    60: (["Console PlayStation", "Console Nintendo", "Console Xbox", "Console rétro"], ["500 Go", "pack", "HDMI"]),
    1140: (["Figurine Pop", "Figurine manga", "Statuette", "Mug geek"], ["Dragon Ball", "Star Wars", "collector"]),
    1160: (["Carte Pokémon", "Carte Yu-Gi-Oh", "Carte Magic", "Booster"], ["rare", "holographique", "VF"]),
    1180: (["Figurine Warhammer", "Miniature", "Socle", "Peinture figurine"], ["à peindre", "jeu de plateau", "28mm"]),
    1280: (["Peluche", "Poupée", "Jouet en bois", "Doudou"], ["pour enfant", "douce", "dès 3 ans"]),
    1281: (["Jeu de société", "Jeu de cartes", "Puzzle", "Jeu de plateau"], ["famille", "2 à 6 joueurs", "stratégie"]),
    1300: (["Voiture miniature", "Maquette avion", "Modèle réduit", "Train électrique"], ["1/43", "métal", "Bburago"]),
    1301: (["Chaussons bébé", "Fléchettes", "Baby-foot", "Tapis d'éveil"], ["naissance", "coton", "salle de jeu"]),
    1302: (["Trampoline", "Balançoire", "Toboggan", "Cerf-volant"], ["extérieur", "jardin", "plein air"]),
    1320: (["Sac à langer", "Sac à main", "Porte-bébé", "Tapis à langer"], ["imperméable", "grande capacité", "cuir"]),
    1560: (["Étagère", "Commode", "Table basse", "Miroir mural"], ["bois massif", "salon", "rangement"]),
    1920: (["Housse de coussin", "Rideau", "Parure de lit", "Nappe"], ["lin", "45x45 cm", "polyester"]),
    1940: (["Café en grains", "Thé vert", "Épices", "Confiture"], ["bio", "1 kg", "artisanal"]),
    2060: (["Lampe de chevet", "Guirlande lumineuse", "Bougie", "Suspension"], ["LED", "déco", "vintage"]),
    2220: (["Collier pour chien", "Litière chat", "Gamelle", "Arbre à chat"], ["animaux", "réglable", "inox"]),
    2280: (["Magazine", "Revue", "Journal", "Hebdomadaire"], ["numéro", "1998", "supplément"]),
    2403: (["Lot de livres", "Bande dessinée", "Manga", "Collection"], ["tomes 1 à 10", "occasion", "Astérix"]),
    2462: (["Lot jeux vidéo", "Console + jeux", "Pack PS3", "Jeux Game Boy"], ["occasion", "complet", "en boîte"]),
    2522: (["Cahier", "Stylo", "Classeur", "Agenda"], ["A4", "papeterie", "bureau"]),
    2582: (["Salon de jardin", "Parasol", "Chaise longue", "Jardinière"], ["aluminium", "terrasse", "résine"]),
    2583: (["Piscine hors sol", "Pompe de filtration", "Bâche piscine", "Robot piscine"], ["chlore", "4m", "spa"]),
    2585: (["Tondeuse", "Sécateur", "Tuyau d'arrosage", "Perceuse"], ["jardinage", "outil", "sans fil"]),
    2705: (["Livre jeunesse", "Roman policier", "Guide pratique", "Livre de cuisine"],
           ["poche", "broché", "Gallimard"]),
    2905: (["Jeu à télécharger", "Code de téléchargement", "Clé Steam", "DLC"], ["PC", "dématérialisé", "Windows"]),
}
GENERIC = ["neuf", "lot de 2", "qualité", "pas cher", "livraison rapide", "noir", "blanc", "grand modèle"]


def _title(rng: random.Random, code: int) -> tuple[str, str]:
    nouns, details = VOCABULARY[code]
    title = f"{rng.choice(nouns)} {rng.choice(details)} {rng.choice(GENERIC)}"
    description = (f"<p>{rng.choice(nouns)} {rng.choice(details)}, {rng.choice(GENERIC)}.</p> "
                   f"Produit {rng.choice(details)} &amp; {rng.choice(GENERIC)}." if rng.random() < 0.6 else "")
    return title.capitalize(), description


def _image(rng: random.Random, code: int) -> Image.Image:
    """A 256x256 picture whose palette and shapes depend on the category (learnable, not trivial)."""
    index = sorted(VOCABULARY).index(code)
    hue = (index * 37) % 256
    base = (hue, (hue * 3) % 256, (255 - hue) % 256)
    image = Image.new("RGB", (256, 256), tuple(min(255, max(0, c + rng.randint(-25, 25))) for c in base))
    draw = ImageDraw.Draw(image)
    for _ in range(3 + index % 5):
        x, y = rng.randint(0, 200), rng.randint(0, 200)
        size = rng.randint(20, 60)
        colour = tuple(rng.randint(0, 255) for _ in range(3))
        (draw.ellipse if index % 2 else draw.rectangle)([x, y, x + size, y + size], fill=colour)
    return image


def write_synthetic_dataset(out: Path, rows_per_class: int = 40, image_share: float = 0.5, seed: int = 7) -> Path:
    """Write ``products.csv`` and ``images/`` to ``out`` (deterministic for a seed); returns ``out``."""
    rng = random.Random(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    productid, imageid = 10_000_000 + seed * 100_000, 20_000_000 + seed * 100_000
    for code in VOCABULARY:
        for _ in range(rows_per_class):
            productid += 1
            imageid += 1
            title, description = _title(rng, code)
            if rng.random() < image_share:
                _image(rng, code).save(out / "images" / f"image_{imageid}_product_{productid}.jpg", quality=85)
            rows.append([productid, imageid, title, description, code])
    rng.shuffle(rows)
    with open(out / "products.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["productid", "imageid", "designation", "description", "prdtypecode"])
        writer.writerows(rows)
    return out
