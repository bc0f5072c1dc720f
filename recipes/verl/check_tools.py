"""Load a verl function-tool file with verl's own loader and call each tool once, without GPUs.

    python recipes/verl/check_tools.py recipes/verl/diagnosis_tools.py

verl's `load_function_tools_from_path` runs the file, whose `@function_tool` registrations build
each OpenAI tool schema from the docstring and validate it (`OpenAIFunctionToolSchema`); each tool
is then called through `FunctionTool.call` with arguments shaped like a model's, and its return
value goes through verl's `normalize_function_tool_return`, as the agent loop does.
"""

import asyncio
import sys

SAMPLE_ARGUMENTS = {
    "search_by_phenotypes": {"findings": ["splenomegaly", "bone pain", "thrombocytopenia"]},
    "disease_info": {"name_or_orpha_code": "ORPHA:355"},
}


def main(path: str) -> int:
    from verl.tools.function_tool import load_function_tools_from_path, normalize_function_tool_return

    loaded = load_function_tools_from_path(path)
    names = sorted(tool.name for tool in loaded)
    if names != sorted(SAMPLE_ARGUMENTS):
        raise SystemExit(f"error: {path} registered {names}, expected {sorted(SAMPLE_ARGUMENTS)}")
    for tool in loaded:
        required = tool.tool_schema.function.parameters.required
        response, reward, _ = normalize_function_tool_return(asyncio.run(tool.call(SAMPLE_ARGUMENTS[tool.name])))
        if not response.text or response.text.startswith("Error:"):
            raise SystemExit(f"error: {tool.name} answered {response.text!r}")
        print(f"tool {tool.name}: schema ok (required {required}), call ok ({len(response.text)} chars)")
    print("verl tools OK")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
