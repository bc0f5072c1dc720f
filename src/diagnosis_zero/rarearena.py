"""RareArena's protocol strings, verbatim: the inference prompt and the three judge prompts.

Source: the RareArena benchmark's public evaluation code (zhao-zy15/RareArena: `eval/run.py`,
`eval/eval.py`, `eval/eval_updated.py`), licensed CC BY-NC-SA 4.0. The strings are reproduced byte
for byte, because numbers are comparable with RareArena's published table only under its own
prompts (see docs/evaluate.md, "Comparing with RareArena's published numbers"). Everything else in
this project is our own code. Do not edit these strings: tests/test_rarearena.py pins their bytes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

# Inference (`eval/run.py`): one user message, no system message, temperature 0.1, max_tokens 4096.
# `{case}` is `case_report` (RDS) or `case_report + " " + test_results` (RDC).
INFERENCE_PROMPT = '\nAs an expert in rare disease field, enumerate top 5 most likely diagnosis for the following patient in order, with the most likely disease output first. Only consider rare diseases.\n\nHere is the case: \n{case}\n\nOnly output the diagnosis in numeric order, one per line. For example:\n1. Disease A;\n2. Disease B;\n...\n\nDo not output anything else!\n'
INFERENCE_TEMPERATURE = 0.1
INFERENCE_MAX_TOKENS = 4096

# Judging: one request per case grading the whole answer, one user message, no system message.
JUDGE_TEMPERATURE = 0.1
JUDGE_MAX_TOKENS = 4096

# Original protocol (`eval/eval.py`): `{answer}` = the model's output, `{diagnosis}` = the record's
# `diagnosis` field only. Note the typographic apostrophes (U+2019) in three places.
JUDGE_PROMPT_ORIGINAL = "\nYou are an expert in rare disease field. You will receive a student's answer containing 5 differential diagnoses, as well as the reference diagnosis. You need to score each diagnosis from the student's answer according to the following rules:\n\n2 = The student’s diagnosis exactly matches the reference diagnosis; \n1 = The student’s diagnosis is a broad category that includes the reference diagnosis; \n0 = The student's diagnosis does not meet the criteria for a score of 1 or 2.\n\nHere is the student’s answer: \n{answer}\n\nHere is the reference diagnosis: \n{diagnosis}\n\nOutput Format: Output the scores in the following format. \n1. Disease 1 name: score X;\n2. Disease 2 name: score X;\n...\n"

# Updated protocol (`eval/eval_updated.py`), with a score-1 set: both sets as Python list literals.
JUDGE_PROMPT_UPDATED = "\n**Task:** Evaluate the student's answer by comparing it with the reference diagnoses and assign scores according to the criteria below.\n\n**Scoring Criteria:**\n- Score 2: Assign this score if the student's answer exactly matches, or is a strict synonym or clear equivalent of, any diagnosis in the Score 2 Set.\n- Score 1: Assign this score only if Score 2 is not met, and the student's answer exactly matches, or is a strict synonym or clear equivalent of, any diagnosis in the Score 1 Set.\n- Score 0: Assign this score if the student's answer does not match any diagnosis in either set.\n\n**Reference Diagnoses:**\n- Score 2 Set: {score2_set}\n- Score 1 Set: {score1_set}\n\n**Student's Answer:**\n{answer}\n\n**Output Format:**\n1. Disease 1 name: score X;\n2. Disease 2 name: score X;\n...\n"

# Updated protocol when the score-1 set is empty: only 2 or 0 can be given.
JUDGE_PROMPT_UPDATED_NO_SCORE1 = "\n**Task:** Evaluate the student's answer by comparing it with the reference diagnoses and assign scores according to the criteria below.\n\n**Scoring Criteria:**\n- Score 2: Assign this score if the student's answer exactly matches, or is a strict synonym or clear equivalent of, any diagnosis in the Score 2 Set.\n- Score 0: Assign this score if the student's answer does not match any diagnosis in the Score 2 set.\n\n**Reference Diagnoses:**\n- Score 2 Set: {score2_set}\n\n**Student's Answer:**\n{answer}\n\n**Output Format:**\n1. Disease 1 name: score X;\n2. Disease 2 name: score X;\n...\n"


# ---------------------------------------------------------------------------------------------
# Requests and replies, built the way RareArena's code builds them (our code, not a copy of theirs)

PROTOCOL_ORIGINAL = "rarearena"  # eval/eval.py: the judge behind the published table
PROTOCOL_UPDATED = "rarearena-updated"  # eval/eval_updated.py (March 2026)
VERBATIM_PROTOCOLS = (PROTOCOL_ORIGINAL, PROTOCOL_UPDATED)
TOP_K = 5  # top-5 = the best of the first five scores

# RareArena's parser is `re.findall(r'score (\d+)', reply)`: case-sensitive, one space, no colon.
# A reply in another shape ("Score: 2") yields no score here, as it does there; we record it as
# a judge error instead of crashing (metric.py) or guessing, so it can be re-asked.
_SCORE = re.compile(r"score (\d+)")


def judge_sets(diagnosis: str, hierarchy=None, orpha_id=None) -> tuple[list[str], list[str]]:
    """Return the updated protocol's (score-2 list, score-1 list) for one case.

    Score 2: `[diagnosis]`, plus the Orphanet name of `orpha_id` when it differs ignoring case.
    Score 1: that NAME's parents naming at most 10 diseases, in file order, duplicates kept. An id
    missing from the file falls back to the diagnosis text as the name (whose parents are then
    those of an entity of exactly that name, if any). `hierarchy` is `reward.load_hierarchy(...)`.
    """
    name = hierarchy.name(orpha_id) if hierarchy is not None and orpha_id not in (None, "") else None
    if name is None:
        name = diagnosis
    # RareArena maps name -> parents in a dict built in file order, so the last entity of a name wins
    codes = hierarchy.by_name.get(name, ()) if hierarchy is not None else ()
    score1 = hierarchy.parents(codes[-1]) if codes else []
    score2 = [diagnosis]
    if diagnosis.lower() != name.lower():
        score2.append(name)
    return score2, score1


def build_judge_request(protocol: str, answer: str, diagnosis: str, hierarchy=None, orpha_id=None) -> dict:
    """Return RareArena's judge request for one case: {"messages", "temperature", "max_tokens"}.

    `rarearena`: the original prompt with the answer as it is and the `diagnosis` field only.
    `rarearena-updated`: `answer.strip()`, both sets as Python list literals (`str(list)`), and
    the 2/0 prompt when the score-1 set is empty. One user message, no system message.
    """
    if protocol == PROTOCOL_ORIGINAL:
        prompt = JUDGE_PROMPT_ORIGINAL.format(answer=answer, diagnosis=diagnosis)
    elif protocol == PROTOCOL_UPDATED:
        score2, score1 = judge_sets(diagnosis, hierarchy, orpha_id)
        if score1:
            prompt = JUDGE_PROMPT_UPDATED.format(answer=answer.strip(), score2_set=str(score2),
                                                 score1_set=str(score1))
        else:
            prompt = JUDGE_PROMPT_UPDATED_NO_SCORE1.format(answer=answer.strip(), score2_set=str(score2))
    else:
        raise ValueError(f"unknown RareArena protocol {protocol!r}; one of {', '.join(VERBATIM_PROTOCOLS)}")
    return {"messages": [{"role": "user", "content": prompt}],
            "temperature": JUDGE_TEMPERATURE, "max_tokens": JUDGE_MAX_TOKENS}


def parse_scores(reply: str | None) -> list[int]:
    """Return every `score N` of a judge reply, in order, as RareArena's metric.py reads them."""
    return [int(s) for s in _SCORE.findall(reply or "")]


def top_scores(scores: list[int], top_k: int = TOP_K) -> tuple[int | None, int | None]:
    """Return (top-1, top-k): the first score and the best of the first `top_k`; None without scores."""
    return (scores[0], max(scores[:top_k])) if scores else (None, None)



# ---------------------------------------------------------------------------------------------
# RareArena's table (metric.py's layout): share of cases at score 0, 1, 2 and "Total" = 1 + 2

NOT_COMPARABLE = "not comparable with RareArena's published numbers"


def _line_scores(judge: dict) -> list[int] | None:
    """Return a judged line's item scores, or None when it carries an error or no real score."""
    if judge.get("error") or judge.get("score") is None:
        return None
    scores = judge.get("scores")
    if not isinstance(scores, list) or not scores:
        scores = [judge["score"]]
    if any(not isinstance(s, int) or isinstance(s, bool) for s in scores):
        return None
    return scores


def rarearena_table(records: list[dict], top_k: int = TOP_K) -> list[dict]:
    """Return one row per judge protocol found in `records` (judged lines), in RareArena's layout.

    Each row: protocol, `comparable` (True only for the verbatim protocols), `lines`, `judged`
    (lines with real scores: the denominator, as RareArena's metric.py counts only those),
    `errors` (judge errors, reported apart, never as 0), `short_replies` (fewer scores than items;
    counted, as RareArena counts them), and `top1`/`topk`: {0, 1, 2, "total"} shares of `judged`.
    """
    by_protocol: dict[str, list[dict]] = {}
    for record in records:
        judge = record.get("judge")
        if isinstance(judge, dict):
            by_protocol.setdefault(str(judge.get("protocol") or "item"), []).append(judge)
    rows = []
    for protocol, judges in sorted(by_protocol.items()):
        scored = [s for j in judges if (s := _line_scores(j)) is not None]
        row = {"protocol": protocol, "comparable": protocol in VERBATIM_PROTOCOLS, "lines": len(judges),
               "judged": len(scored), "errors": len(judges) - len(scored),
               "short_replies": sum(1 for j in judges if j.get("short_reply") and _line_scores(j) is not None)}
        for name, pick in (("top1", lambda s: s[0]), ("topk", lambda s: max(s[:top_k]))):
            picked = [pick(s) for s in scored]
            shares = {score: (sum(1 for p in picked if p == score) / len(picked) if picked else None)
                      for score in (0, 1, 2)}
            shares["total"] = (shares[1] + shares[2]) if picked else None
            row[name] = shares
        rows.append(row)
    return rows


def format_rarearena_rows(title: str, rows: list[dict], top_k: int = TOP_K) -> list[list[str]]:
    """Return table rows (title, protocol, top-1 0/1/2/Total, top-k 0/1/2/Total, counts) as text."""
    def pct(value) -> str:
        return "-" if value is None else f"{100 * value:.2f}%"

    out = []
    for row in rows:
        label = row["protocol"] + ("" if row["comparable"] else f" ({NOT_COMPARABLE})")
        out.append([title, label,
                    *(pct(row["top1"][k]) for k in (0, 1, 2, "total")),
                    *(pct(row["topk"][k]) for k in (0, 1, 2, "total")),
                    str(row["judged"]), str(row["errors"]), str(row["short_replies"])])
    return out


def rarearena_header(top_k: int = TOP_K) -> list[str]:
    return ["results", "judge protocol", "top-1 score 0", "top-1 score 1", "top-1 score 2", "top-1 Total",
            f"top-{top_k} score 0", f"top-{top_k} score 1", f"top-{top_k} score 2", f"top-{top_k} Total",
            "judged", "judge errors", "short replies"]


def protocol_note(records: list[dict]) -> str | None:
    """Return a warning line when judged lines come from a protocol other than RareArena's own."""
    others = sorted({str(j.get("protocol") or "item") for r in records if isinstance(j := r.get("judge"), dict)}
                    - set(VERBATIM_PROTOCOLS))
    if not others:
        return None
    return (f"note: judge figures from protocol {', '.join(others)} are {NOT_COMPARABLE} "
            "(use `judge --protocol rarearena`; docs/evaluate.md)")


def render_rarearena_layout(paths: list[str], fmt: str = "table", top_k: int = TOP_K) -> str:
    """Return RareArena's table for results files: one row per file and judge protocol."""
    from diagnosis_zero.metrics import load_results

    header, rows, data = rarearena_header(top_k), [], []
    for path in paths:
        records = load_results([path])
        first = records[0] if records else {}
        title = str(first.get("model", Path(path).stem)) + (
            f" step {first['step']}" if first.get("step") is not None else "")
        table = rarearena_table(records, top_k)
        data += [{"file": str(path), "model": first.get("model"), "step": first.get("step"), **row} for row in table]
        rows += format_rarearena_rows(title, table, top_k)
    if fmt == "json":
        return json.dumps(data, indent=2, default=str)
    if not rows:
        return "no judged lines (run `diagnosis-zero judge` first)"
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    else:
        widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
        lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
                 .rstrip() for row in [header, ["-" * w for w in widths], *rows]]
    legend = ("shares of judged cases at each score; Total = score 1 + score 2 (RareArena's metric.py); judge "
              "errors are left out of the shares; short replies (fewer scores than items) are counted as scored")
    return "\n".join(lines) + "\n\n" + legend
