"""Diagnosis-Zero's knowledge tools as verl 0.9.1 function tools (`rollout.multi_turn.function_tool_path`).

verl loads this file once per agent-loop worker and registers each function with `@function_tool`,
which derives the OpenAI tool schema from the docstring and type hints with transformers'
`get_json_schema`: the same schemas TRL's `GRPOTrainer(tools=...)` shows the model. The functions
are `diagnosis_zero.tools`' own, so a verl run and a TRL run call the same code. Orphanet files:
set `DIAGNOSIS_ZERO_ORPHANET` (paths joined by ':') in the environment of the Ray workers.
"""

from verl.tools.function_tool import function_tool

from diagnosis_zero import tools

for _tool in tools.TOOLS.values():
    function_tool(_tool)
