"""is_mixed_language: other scripts and foreign Latin-script sentences, never medical English."""

from __future__ import annotations

import pytest

from diagnosis_zero import reward
from diagnosis_zero.reward import compute_score, is_mixed_language

MIXED = [
    # the study's own examples: Japanese and Chinese appended after </answer>
    "<think>r</think><answer>\nDiffuse large B-cell lymphoma\n</answer>バルク細胞リンパ腫とは異なる診断を提示しており",
    "<think>r</think><answer>\nGuillain-Barré syndrome\n</answer>知情人士指出,这里的诊断指向需要考虑多种神经性疾病",
    "<think>The patient is 患者 with fever.</think><answer>Fabry disease</answer>",
    "診断", "患者",
    "환자는 발열이 있습니다", "Пациент с лихорадкой", "المريض يعاني من الحمى", "מטופל עם חום",
    "ผู้ป่วยมีไข้", "रोगी को बुखार है", "Η διάγνωση είναι",
    # whole sentences in another Latin-script language
    "El paciente presenta fiebre y dolor abdominal desde hace tres días.",
    "Tiene fiebre y dolor.",
    "La paciente tiene una enfermedad rara.",
    "Le patient présente une maladie rare du métabolisme.",
    "Der Patient hat eine seltene Erkrankung des Stoffwechsels.",
    "Es handelt sich um eine seltene Krankheit.",
    "Il paziente presenta una malattia rara che colpisce il fegato.",
    "O paciente apresenta uma doença rara com febre.",
    "De patiënt heeft een zeldzame ziekte met koorts.",
    "Bệnh nhân bị sốt cao và đau bụng.",
    "The patient has fever. Por lo tanto, el diagnóstico más probable es la enfermedad de Gaucher.",
    "<think>Il s'agit d'une maladie de surcharge lysosomale avec une splénomégalie.</think><answer>Gaucher disease"
    "</answer>",
    # far into a long English completion
    "The patient has fever and rash. " * 2000 + "Der Patient hat eine seltene Erkrankung des Stoffwechsels.",
]

MEDICAL_ENGLISH = [
    # diacritics in eponyms and borrowed terms
    "Guillain-Barré syndrome with café-au-lait macules and Ménière disease.",
    "Köhler disease, Kienböck disease, Legg-Calvé-Perthes disease and Sjögren-Larsson syndrome were considered.",
    "She showed la belle indifférence toward her paralysis.",
    "Déjà vu episodes and jamais vu suggested temporal lobe epilepsy.",
    "Folie à deux was considered.",
    "The café coronary occurred during a meal.",
    # French and Latin phrases that are medical English
    "Linear scleroderma en coup de sabre was diagnosed.",
    "Mal de Meleda is a palmoplantar keratoderma.",
    "Peau d'orange skin over the breast with tic douloureux and grand mal seizures.",
    "The patient had a cri du chat phenotype.",
    "Situs inversus totalis, pectus excavatum, status epilepticus, in situ, post mortem, per os, ad libitum.",
    "Lupus erythematosus profundus, livedo reticularis, erythema nodosum, morphea en plaque.",
    "A de novo variant was found in vivo and in vitro, as Smith et al. reported.",
    "Pityriasis rubra pilaris, lichen planus, acanthosis nigricans",
    # Greek letters, units and symbols
    "β-thalassemia major; TNF-α, IFN-γ and IL-1β were elevated; κ/λ ratio normal.",
    "Temperature 39.5 °C, CRP ≥ 100 mg/L, 5 µg/dL, Na+ 130 mmol/L, ± 2 SD, ≤ 3, → ↑, 10⁹/L, 5×10³.",
    "Blood pressure 120/80 mmHg，heart rate 90/min。",  # a stray full-width comma is punctuation, not a word
    # eponyms and names that contain foreign function words
    "Anti-Ro/SSA and anti-La/SSB were positive, consistent with Sjögren syndrome.",
    "Von Willebrand disease and Van der Woude syndrome.",
    "The El Escorial criteria for ALS were met.",
    "Cornelia de Lange syndrome and Di George syndrome.",
    "<think>The patient is a 45-year-old man with fever.</think><answer>Familial Mediterranean fever</answer>",
    "1. Gaucher disease\n2. Fabry disease\n3. Wilson disease",
    "",
]


@pytest.fixture(params=["py3langid", "word lists"])
def identifier(request, monkeypatch):
    """Both ways of confirming a Latin-script sentence: the library, and function words alone."""
    if request.param == "word lists":
        monkeypatch.setattr(reward, "_langid", None)
        monkeypatch.setattr(reward, "_langid_loaded", True)
    return request.param


@pytest.mark.parametrize("text", MIXED)
def test_flags_other_languages(identifier, text):
    assert is_mixed_language(text) is True


@pytest.mark.parametrize("text", MEDICAL_ENGLISH)
def test_does_not_flag_medical_english(identifier, text):
    assert is_mixed_language(text) is False


def test_language_penalty_in_the_score():
    truth = {"diagnosis": ["Diffuse large B-cell lymphoma"]}
    clean = "<think>r</think><answer>DLBCL</answer>"
    mixed = "<think>El paciente tiene fiebre y una masa en el abdomen.</think><answer>DLBCL</answer>"
    assert compute_score("x", clean, truth)["score"] == 1.0
    result = compute_score("x", mixed, truth)
    assert result["mixed_language"] == 1 and result["score"] == pytest.approx(0.9)
    assert compute_score("x", mixed, truth, language_check=False)["score"] == 1.0
    assert compute_score("x", mixed, truth, preset="original")["mixed_language"] == 1  # reported, not penalised
