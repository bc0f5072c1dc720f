"""RareArena's protocol strings, verbatim: the inference prompt and the three judge prompts.

Source: the RareArena benchmark's public evaluation code (zhao-zy15/RareArena: `eval/run.py`,
`eval/eval.py`, `eval/eval_updated.py`), licensed CC BY-NC-SA 4.0. The strings are reproduced byte
for byte, because numbers are comparable with RareArena's published table only under its own
prompts (see docs/evaluate.md, "Comparing with RareArena's published numbers"). Everything else in
this project is our own code. Do not edit these strings: tests/test_rarearena.py pins their bytes.
"""

from __future__ import annotations

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
