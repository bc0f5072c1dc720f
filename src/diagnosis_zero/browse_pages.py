"""The pages of `diagnosis-zero browse`: server-rendered HTML with no external assets.

What a case's outcome is (judge score, rule match, the filters), the highlighted completion (the
`<think>` and `<answer>` blocks, and other-language runs as `reward.is_mixed_language` counts
them), and the list, case, compare and diagnose pages. Values are shown as a reader writes them:
"yes"/"no", "–" for unknown, never a Python repr.
"""

from __future__ import annotations

import html
import re
from urllib.parse import urlencode

from diagnosis_zero.agreement import disagrees
from diagnosis_zero.metrics import think_dropped
from diagnosis_zero.reward import MAX_PARENT_DISEASES, OTHER_LANGUAGE_RUN

_TAG = re.compile(r"(</?(?:think|answer)>)", re.IGNORECASE)
_CASE_MARKER = "The case report is:"
JUDGE_MEANING = {2: "exact match or synonym", 1: "broader category that includes the reference", 0: "wrong"}


# ---------------------------------------------------------------------------------------- outcome

def judge_score(record: dict) -> int | None:
    judge = record.get("judge")
    return judge.get("score") if isinstance(judge, dict) else None


def is_correct(record: dict) -> bool:
    """Correct by the judge (score 2) when judged, else by the rule."""
    score = judge_score(record)
    return score == 2 if score is not None else bool(record.get("acc"))


def disagreement_method(orphanet=()) -> str:
    """Return the rule method browse's judge-disagreement filters use: `clinical`, or
    `clinical+lexicon` when Orphanet files are given (the agreement verb's names).

    The filters ask "rule right or wrong" on the judge's 2-vs-not scale, so the partial-credit
    method (which answers 2/1/0) is not one of their choices.
    """
    return "clinical+lexicon" if orphanet else "clinical"


def filters(orphanet=(), remember: bool = False) -> dict:
    """Return the list page's filters: name -> (button label, predicate on a record).

    "rule wrong, judge right" and "rule right, judge wrong" are `agreement.disagrees` under
    `disagreement_method(orphanet)`, split by the judge's verdict, so browse shows exactly the
    cases `diagnosis-zero agreement` writes to disagreements.csv for that method. `remember`: grade
    each record once and keep it (for an app that serves the same records on every page).
    """
    method, files = disagreement_method(orphanet), tuple(str(p) for p in orphanet or ())
    # Each list page counts every filter over every record. Keyed by the record object, which the
    # entry keeps alive, so an id is never reused for another record.
    verdicts: dict[int, tuple[dict, bool]] = {}

    def disagreement(record: dict) -> bool:
        entry = verdicts.get(id(record))
        if entry is None or entry[0] is not record:
            entry = (record, bool(disagrees(record, method, files)))
            if remember:
                verdicts[id(record)] = entry
        return entry[1]

    def rule_wrong_judge_right(record: dict) -> bool:
        return judge_score(record) == 2 and disagreement(record)

    def rule_right_judge_wrong(record: dict) -> bool:
        return judge_score(record) in (0, 1) and disagreement(record)

    return {
        "all": ("all", lambda r: True),
        "correct": ("correct", is_correct),
        "wrong": ("wrong", lambda r: not is_correct(r)),
        "format_failure": ("format failure", lambda r: not r.get("format")),
        "think_dropped": ("think dropped", think_dropped),
        "mixed_language": ("mixed language", lambda r: bool(r.get("mixed_language"))),
        "rule_wrong_judge_right": ("rule wrong, judge right", rule_wrong_judge_right),
        "rule_right_judge_wrong": ("rule right, judge wrong", rule_right_judge_wrong),
    }


FILTERS = filters()  # without Orphanet files; a browse session builds its own with `filters(orphanet)`


def case_text(record: dict) -> str:
    """Return the case report from the user message (the text after the template's marker)."""
    messages = record.get("prompt") or []
    content = next((m.get("content", "") for m in reversed(messages)
                    if isinstance(m, dict) and m.get("role") == "user"), "")
    if _CASE_MARKER in content:
        content = content.split(_CASE_MARKER, 1)[1].strip()
        content = content[:-1] if content.endswith(".") else content
    return content


# -------------------------------------------------------------------------------------- rendering

def highlight_other_language(text: str) -> str:
    """Escape `text`, marking runs of other-language script with <mark class="lang">."""
    parts, last = [], 0
    for match in OTHER_LANGUAGE_RUN.finditer(text):
        parts.append(html.escape(text[last:match.start()]))
        parts.append(f'<mark class="lang" title="other language">{html.escape(match.group())}</mark>')
        last = match.end()
    parts.append(html.escape(text[last:]))
    return "".join(parts)


def highlight_completion(text: str) -> str:
    """Render a completion as HTML: tags, the think block, the answer, text outside, other languages."""
    out, inside = [], "outside"
    for piece in _TAG.split(text or ""):
        if not piece:
            continue
        if _TAG.fullmatch(piece):
            name = piece.strip("</>").lower()
            closing = piece.startswith("</")
            out.append(f'<span class="tag tag-{name}">{html.escape(piece)}</span>')
            inside = "outside" if closing else name
            continue
        out.append(f'<span class="{inside}">{highlight_other_language(piece)}</span>')
    return "".join(out)


_CSS = """
*{box-sizing:border-box} body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d1d1f;background:#f6f7f9}
header{background:#1f3a5f;color:#fff;padding:.7rem 1.5rem;display:flex;gap:1.5rem;align-items:baseline}
header a{color:#cfe3ff;text-decoration:none} header h1{font-size:1.15rem;margin:0}
main{padding:1rem 1.5rem;max-width:1400px}
.chips a{display:inline-block;margin:.15rem;padding:.25rem .7rem;border-radius:1rem;background:#e4e8ee;color:#1d1d1f;text-decoration:none;font-size:.9em}
.chips a.active{background:#1f3a5f;color:#fff}
table{border-collapse:collapse;width:100%;background:#fff} th,td{border-bottom:1px solid #e3e3e3;padding:.35rem .5rem;text-align:left;vertical-align:top;font-size:.92em}
th{background:#eef1f5} tr:hover td{background:#f8fbff} #cases td:first-child{white-space:nowrap}
.badge{display:inline-block;padding:0 .45rem;border-radius:.6rem;font-size:.78em;margin-right:.2rem;white-space:nowrap}
.ok{background:#d8f5e3;color:#11663a} .bad{background:#fde2e1;color:#9b1c1c} .warn{background:#fff1cc;color:#7a5300} .muted{background:#eceef1;color:#555}
.card{background:#fff;border:1px solid #e1e4e8;border-radius:.5rem;padding:.8rem 1rem;margin:.8rem 0}
.card h2{font-size:1rem;margin:.1rem 0 .5rem}
pre.completion,pre.raw{white-space:pre-wrap;word-wrap:break-word;font-family:ui-monospace,Menlo,monospace;font-size:.88em;background:#fbfbfc;border:1px solid #eee;padding:.6rem;border-radius:.3rem;margin:0}
.tag{color:#7b2cbf;font-weight:bold} .think{color:#4a5568;background:#f1f3f7} .answer{background:#fff3a3;font-weight:bold}
.outside{color:#8a5a00} mark.lang{background:#ffb3c7;color:#7a0026;border-bottom:2px solid #d6336c}
p.case{white-space:pre-wrap} .cols{display:grid;grid-template-columns:1fr 1fr;gap:1rem} .warning{color:#7a5300;font-size:.85em}
form.inline{display:inline} select,input,button,textarea{font:inherit;padding:.2rem .4rem}
textarea{width:100%;min-height:9rem} dl{display:grid;grid-template-columns:max-content 1fr;gap:.2rem .8rem;margin:.6rem 0 0} dt{color:#555}
"""


def page_frame(title: str, body: str, heading: str, can_diagnose: bool) -> str:
    nav = '<a href="/">cases</a>' + (' <a href="/diagnose">diagnose a case</a>' if can_diagnose else "")
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<meta name='viewport' content='width=device-width,initial-scale=1'><style>{_CSS}</style></head>"
            f"<body><header><h1>Diagnosis-Zero browse</h1><span>{html.escape(heading)}</span>{nav}</header>"
            f"<main>{body}</main></body></html>")


def _link(path: str, **params) -> str:
    return html.escape(f"{path}?{urlencode({k: v for k, v in params.items() if v not in (None, '')})}")


def _badges(record: dict) -> str:
    badges = []
    score = judge_score(record)
    if score is not None:
        badges.append(f'<span class="badge {"ok" if score == 2 else "warn" if score == 1 else "bad"}">judge {score}</span>')
    elif isinstance(record.get("judge"), dict):
        badges.append('<span class="badge muted">judge error</span>')
    badges.append(f'<span class="badge {"ok" if record.get("acc") else "bad"}">rule {_text(record.get("score"))}</span>')
    if not record.get("format"):
        badges.append('<span class="badge bad">format failure</span>')
    if think_dropped(record):
        badges.append('<span class="badge warn">think dropped</span>')
    if record.get("mixed_language"):
        badges.append('<span class="badge warn">mixed language</span>')
    return "".join(badges)


def _text(value) -> str:
    """A value as a reader writes it: "–" for none, "yes"/"no" for booleans, lists joined; never a repr."""
    if value is None or value == "":
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(_text, value))
    return str(value)


def _prediction(record: dict) -> str:
    prediction = record.get("prediction")
    if isinstance(prediction, list):
        return "; ".join(f"{i}. {p}" for i, p in enumerate(prediction, 1))
    return prediction or ""


def _sample_suffix(record: dict) -> str:
    return f" #{record['sample']}" if record.get("sample") else ""


def _orpha_suffix(record: dict) -> str:
    return f" <small>ORPHA:{html.escape(str(record['orpha_id']))}</small>" if record.get("orpha_id") else ""


def _checkpoint_label(name: str) -> str:
    return name.replace("step-", "step ") if name.startswith("step-") else name


def page_list(checkpoints, name: str, filter_name: str, query: str, filter_set: dict = FILTERS) -> str:
    records = checkpoints[name]
    q = query.lower().strip()
    if q:
        records = [r for r in records if q in str(r.get("id", "")).lower() or q in _prediction(r).lower()
                   or q in " ".join(r.get("references") or []).lower() or q in case_text(r).lower()]
    chips = "".join(
        f'<a class="{"active" if f == filter_name else ""}" data-filter="{f}" '
        f'href="{_link("/", ckpt=name, filter=f, q=query)}">{html.escape(label)} '
        f"({sum(1 for r in records if pred(r))})</a>"
        for f, (label, pred) in filter_set.items())
    shown = [r for r in records if filter_set[filter_name][1](r)]
    options = "".join(f'<option value="{html.escape(n)}"{" selected" if n == name else ""}>'
                      f"{html.escape(_checkpoint_label(n))} ({len(c)})</option>" for n, c in checkpoints.items())
    rows = "".join(
        f'<tr><td><a class="open" href="{_link("/case", id=r.get("id"), sample=r.get("sample") or 0, ckpt=name, filter=filter_name)}">'
        f'{html.escape(str(r.get("id")))}</a>{_sample_suffix(r)}</td>'
        f'<td>{html.escape("; ".join(r.get("references") or []))}{_orpha_suffix(r)}</td>'
        f"<td>{html.escape(_prediction(r))}</td><td>{_badges(r)}</td></tr>"
        for r in shown) or '<tr><td colspan="4"><i>no cases match</i></td></tr>'
    judged = [r for r in records if judge_score(r) is not None]
    summary = (f"{len(shown)} of {len(records)} shown · rule accuracy "
               f"{sum(bool(r.get('acc')) for r in records) / max(1, len(records)):.1%}")
    if judged:
        summary += f" · judge top-1 {sum(judge_score(r) == 2 for r in judged) / len(judged):.1%} ({len(judged)} judged)"
    return (f'<form class="inline" method="get" action="/">checkpoint <select name="ckpt" onchange="this.form.submit()">'
            f'{options}</select> <input type="hidden" name="filter" value="{html.escape(filter_name)}">'
            f'<input name="q" placeholder="search id, diagnosis, case text" value="{html.escape(query)}" size="32"> '
            f'<button type="submit">search</button></form>'
            f'<div class="chips" id="filters">{chips}</div><p id="summary">{summary}</p>'
            f'<table id="cases"><thead><tr><th>case</th><th>ground truth</th><th>prediction</th><th>outcome</th>'
            f"</tr></thead><tbody>{rows}</tbody></table>")


def _ground_truth(record: dict, hierarchy) -> str:
    refs = "".join(f"<li>{html.escape(r)}</li>" for r in record.get("references") or [])
    orpha = str(record.get("orpha_id") or "")
    parts = [f'<div class="card" id="ground-truth"><h2>Ground truth</h2><ul>{refs}</ul>',
             f"<dl><dt>Orphanet code</dt><dd>{('ORPHA:' + html.escape(orpha)) if orpha else '<i>unknown</i>'}</dd>"]
    entity = hierarchy.entities.get(orpha) if hierarchy is not None else None
    if hierarchy is not None and entity is None and orpha:
        parts.append("<dt>Orphanet entity</dt><dd><i>not in the hierarchy file</i></dd>")
    if entity:
        kind = f" <small>({html.escape(entity.type)})</small>" if entity.type else ""
        parts.append(f"<dt>Orphanet name</dt><dd>{html.escape(entity.name)}{kind}</dd>"
                     "<dt>parents</dt><dd><ul id='parents'>")
        for parent in entity.parents:
            narrow = parent.disease_count <= MAX_PARENT_DISEASES
            parts.append(f"<li>{html.escape(parent.name)} <small>({parent.disease_count} diseases"
                         f"{'; counts as score 1 in the updated judge' if narrow else ''})</small></li>")
        parts.append("</ul></dd>")
    parts.append("</dl></div>")
    return "".join(parts)


def _verdict(record: dict) -> str:
    judge = record.get("judge")
    if not isinstance(judge, dict):
        return '<div class="card" id="judge-verdict"><h2>Judge verdict</h2><i>not judged</i></div>'
    score = judge.get("score")
    scores = judge.get("scores")
    head = (f'<span class="badge {"ok" if score == 2 else "warn" if score == 1 else "bad"}">score {score}</span> '
            f"{html.escape(JUDGE_MEANING.get(score, ''))}" if score is not None else
            '<span class="badge muted">no score</span>')
    extra = f"<dt>per item</dt><dd>{html.escape(_text(scores))}</dd>" if scores and len(scores) > 1 else ""
    error = f"<dt>error</dt><dd>{html.escape(str(judge.get('error')))}</dd>" if judge.get("error") else ""
    cached = ("<dt>from the judge cache</dt><dd>yes</dd>" if judge.get("cached") else "")
    return (f'<div class="card" id="judge-verdict"><h2>Judge verdict</h2><p class="verdict">{head}</p>'
            f"<dl>{extra}{error}{cached}</dl>"
            f'<p>raw text:</p><pre class="raw">{html.escape(str(judge.get("raw") or ""))}</pre></div>')


def output_card(record: dict, heading: str) -> str:
    completion = highlight_completion(record.get("completion") or "")
    note = ""
    if record.get("mixed_language") and "<mark" not in completion:
        note = ('<p class="warning">Flagged as mixed language, but in Latin script (e.g. a sentence in '
                "Spanish or French), so nothing is highlighted.</p>")
    tokens = (f"<dt>tokens</dt><dd>{html.escape(_text(record['num_tokens']))}</dd>"
              if record.get("num_tokens") is not None else "")
    return (f'<div class="card output"><h2>{html.escape(heading)}</h2><p>{_badges(record)}</p>'
            f'<pre class="completion">{completion}</pre>{note}'
            f"<dl><dt>prediction</dt><dd class='prediction'>{html.escape(_prediction(record))}</dd>"
            f"<dt>rule score</dt><dd class='rule-score'>{html.escape(_text(record.get('score')))} "
            f"({'match' if record.get('acc') else 'no match'})</dd>"
            f"<dt>format</dt><dd>{'valid' if record.get('format') else 'invalid'}</dd>"
            f"<dt>think block</dt><dd>{'present' if record.get('think_present') else 'missing'}</dd>"
            f"<dt>mixed language</dt><dd>{'yes' if record.get('mixed_language') else 'no'}</dd>"
            f"{tokens}</dl></div>")


def _find(checkpoints, name, case_id, sample):
    return next((r for r in checkpoints.get(name, ())
                 if str(r.get("id")) == case_id and int(r.get("sample") or 0) == sample), None)


def page_case(checkpoints, name, case_id, sample, hierarchy, filter_name) -> str | None:
    record = _find(checkpoints, name, case_id, sample)
    if record is None:
        return None
    others = []
    for other in checkpoints:
        found = _find(checkpoints, other, case_id, sample)
        if found is None:
            continue
        mark = "✓" if is_correct(found) else "✗"
        label = f"{_checkpoint_label(other)} {mark}"
        others.append(f"<b>{html.escape(label)}</b>" if other == name else
                      f'<a href="{_link("/case", id=case_id, sample=sample, ckpt=other, filter=filter_name)}">'
                      f"{html.escape(label)}</a>")
    options = "".join(f'<option value="{html.escape(n)}"{" selected" if n == name else ""}>'
                      f"{html.escape(_checkpoint_label(n))}</option>" for n in checkpoints)
    other_default = next((n for n in reversed(checkpoints) if n != name), name)
    options_b = "".join(f'<option value="{html.escape(n)}"{" selected" if n == other_default else ""}>'
                        f"{html.escape(_checkpoint_label(n))}</option>" for n in checkpoints)
    compare = (f'<form class="inline" method="get" action="/compare" id="compare-form">'
               f'<input type="hidden" name="id" value="{html.escape(case_id)}">'
               f'<input type="hidden" name="sample" value="{sample}">compare <select name="a">{options}</select> '
               f'with <select name="b">{options_b}</select> <button type="submit">side by side</button></form>')
    return (f'<p><a href="{_link("/", ckpt=name, filter=filter_name)}">← back to the list</a> · checkpoints: '
            f'{" · ".join(others)}</p><p>{compare}</p>'
            f'<div class="card" id="case-text"><h2>Case {html.escape(case_id)}</h2><p class="case">{html.escape(case_text(record))}</p></div>'
            f"{_ground_truth(record, hierarchy)}{output_card(record, f'Model output · {_checkpoint_label(name)}')}"
            f"{_verdict(record)}")


def page_compare(checkpoints, case_id, sample, a, b, hierarchy) -> str | None:
    left, right = _find(checkpoints, a, case_id, sample), _find(checkpoints, b, case_id, sample)
    if left is None and right is None:
        return None
    record = left or right
    columns = ""
    for name, found in ((a, left), (b, right)):
        columns += (f'<div class="side" data-checkpoint="{html.escape(name)}">'
                    + (output_card(found, _checkpoint_label(name)) + _verdict(found) if found else
                       f'<div class="card"><h2>{html.escape(_checkpoint_label(name))}</h2><i>no result for this case</i></div>')
                    + "</div>")
    return (f'<p><a href="{_link("/case", id=case_id, sample=sample, ckpt=a)}">← back to the case</a></p>'
            f'<div class="card" id="case-text"><h2>Case {html.escape(case_id)}</h2><p class="case">{html.escape(case_text(record))}</p></div>'
            f'{_ground_truth(record, hierarchy)}<div class="cols" id="compare">{columns}</div>')


_DIAGNOSE_JS = """
async function diagnose(){
  const out=document.getElementById('stream'), done=document.getElementById('rendered');
  out.textContent=''; done.innerHTML=''; document.getElementById('run').disabled=true;
  const body=new URLSearchParams({case: document.getElementById('case').value,
                                  reference: document.getElementById('reference').value});
  const resp=await fetch('/api/diagnose',{method:'POST',body});
  const reader=resp.body.getReader(), decoder=new TextDecoder(); let text='';
  for(;;){const {value,done:end}=await reader.read(); if(end) break;
          const chunk=decoder.decode(value,{stream:true}); text+=chunk; out.textContent=text;}
  const rendered=await fetch('/api/render',{method:'POST',body:new URLSearchParams({completion:text,
                              reference: document.getElementById('reference').value})});
  done.innerHTML=await rendered.text(); document.getElementById('run').disabled=false;
}
"""


def page_diagnose() -> str:
    return ('<div class="card"><h2>Diagnose a pasted case</h2><p>Paste a case report; the model streams its '
            'reasoning and answer. Optionally give the reference diagnosis to see the rule score.</p>'
            '<textarea id="case" placeholder="A 24-year-old woman presented with ..."></textarea>'
            '<p>reference diagnosis (optional) <input id="reference" size="40"> '
            '<button id="run" onclick="diagnose()">diagnose</button></p></div>'
            '<div class="card"><h2>Streaming output</h2><pre class="completion" id="stream"></pre></div>'
            f'<div id="rendered"></div><script>{_DIAGNOSE_JS}</script>')


def render_diagnosis(completion: str, reference: str) -> str:
    """HTML for a finished pasted-case diagnosis: highlighted output plus the rule's reading of it."""
    from diagnosis_zero import reward

    if reference.strip():
        result = reward.compute_score(solution_str=completion,
                                      ground_truth={"diagnosis": [reference.strip()], "orpha_id": ""})
        record = {"completion": completion, "prediction": result["pred"], "score": result["score"],
                  "acc": result["acc"], "format": result["format"], "think_present": result["think_present"],
                  "mixed_language": result["mixed_language"]}
    else:
        parsed = reward.parse_completion(completion)
        record = {"completion": completion, "prediction": parsed.answer or "", "score": "– (no reference)",
                  "acc": None, "format": parsed.format_ok, "think_present": parsed.think_present,
                  "mixed_language": reward.is_mixed_language(completion)}
    return output_card(record, "Result")
