"""`diagnosis-zero browse`: a local web app to read what the model wrote, case by case.

Built on Werkzeug (Pallets' WSGI toolkit, already pinned through tensorboard): server-rendered
pages with no external assets, so it works offline and keeps case reports on 127.0.0.1. Gradio
6.31.0 was the first choice, but it requires pillow<13 against our pinned pillow 13.0.0, and its
front end fetches web fonts from the internet.

Pages: `/` lists a checkpoint's cases with filters; `/case` shows one case (case text, highlighted
reasoning and answer, ground truth with Orphanet code and parents, rule score and judge verdict);
`/compare` puts two checkpoints side by side; `/diagnose` (with `--model`) streams a diagnosis of
a pasted case. The pages are rendered in browse_pages.py; this module reads the results (files
or folders, through io.find_results and io.read_jsonl) and serves them.
"""

from __future__ import annotations

import argparse
import html
import logging
from dataclasses import dataclass, field
from pathlib import Path

from diagnosis_zero import cli
from diagnosis_zero.browse_pages import (
    FILTERS,
    case_text,
    filters,
    highlight_completion,
    is_correct,
    judge_score,
    page_case,
    page_compare,
    page_diagnose,
    page_frame,
    page_list,
    render_diagnosis,
)
from diagnosis_zero.errors import ConfigError, InputFileError
from diagnosis_zero.io import find_results, orphanet_hierarchy, read_jsonl

__all__ = ["FILTERS", "BrowseConfig", "Generator", "case_text", "highlight_completion", "is_correct",
           "judge_score", "load_checkpoints", "make_app", "render_diagnosis"]

logger = logging.getLogger(__name__)

MAX_PASTED_CHARS = 20_000


@dataclass
class BrowseConfig:
    results: list[str] = field(default_factory=list, metadata={
        "required": True, "metavar": "PATH",
        "help": "results folders with step-N.jsonl / step-N.judged.jsonl files, or results files"})
    orphanet: list[str] | None = field(default=None, metadata={
        "aliases": ["--hierarchy"], "metavar": "PATH",
        "help": "Orphanet file(s): orphanet_hypernym.json shows each ground truth's Orphanet name and "
                "parents; the judge-disagreement filters then use the clinical+lexicon rule (as `agreement`)"})
    model: str | None = field(default=None, metadata={
        "help": "model to diagnose pasted cases with (local path, hub id or bundled:NAME)"})
    template: str | None = field(default=None, metadata={
        "help": "prompt template for pasted cases (see prepare); default: a training run's own, else r1-zero"})
    assistant_prefix: str | None = field(default=None, metadata={
        "help": "text opening the assistant turn for pasted cases; default: a training run's own, else none"})
    max_new_tokens: int | None = field(default=None, metadata={
        "help": "generation limit for pasted cases, tokens; default: a training run's own, else 1024"})
    host: str = field(default="127.0.0.1", metadata={
        "help": "address to bind (127.0.0.1: only this machine can connect)"})
    port: int = field(default=7860, metadata={"help": "port to listen on"})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cli.add_dataclass_arguments(parser, BrowseConfig)


def run(args) -> int:
    from werkzeug.serving import run_simple

    config = cli.dataclass_from_args(BrowseConfig, args)
    checkpoints, warnings = load_checkpoints(config.results)
    hierarchy = orphanet_hierarchy(config.orphanet)
    generator = load_pasted_case_generator(config.model, config.template, config.assistant_prefix,
                                           config.max_new_tokens) if config.model else None
    if config.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("binding %s: anyone who can reach this machine can read these cases", config.host)
    app = make_app(checkpoints, hierarchy=hierarchy, generator=generator, warnings=warnings,
                   title=" ".join(config.results), orphanet=config.orphanet)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    print(f"browse: http://{config.host}:{config.port}/  ({sum(map(len, checkpoints.values()))} results, "
          f"{len(checkpoints)} checkpoints; Ctrl+C to stop)", flush=True)
    run_simple(config.host, config.port, app, threaded=True, use_reloader=False)
    return 0


# ---------------------------------------------------------------------------------------- loading

def load_checkpoints(paths) -> tuple[dict[str, list[dict]], list[str]]:
    """Read results folders or files: {checkpoint name: records} ordered by step, plus warnings for the page.

    A checkpoint is a step (step-N) or, for a results file with another name, that name; names that
    several paths share get their folder's name in front. A judged file's verdicts are laid over its
    evaluated file, so a judge still running shows the cases it has not reached yet as unjudged.
    Corrupt lines and a torn last line are skipped and listed as warnings.
    """
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    found = []
    for path in paths:
        files = find_results(path)
        if not files:
            raise InputFileError(path, None, None, "no results files (step-N.jsonl or step-N.judged.jsonl)")
        folder = Path(path) if Path(path).is_dir() else Path(path).parent
        found += [(folder.name, file) for file in files]
    folders_of: dict[str, set[str]] = {}
    for folder, file in found:
        folders_of.setdefault(file.name, set()).add(folder)
    groups: dict[str, dict[bool, Path]] = {}
    order: dict[str, tuple] = {}
    for folder, file in found:
        name = f"{folder}/{file.name}" if len(folders_of[file.name]) > 1 else file.name
        groups.setdefault(name, {})[file.judged] = file.path
        order[name] = (0, file.step, name) if file.step is not None else (1, 0, name)
    warnings: list[str] = []
    checkpoints = {}
    for name in sorted(groups, key=order.get):
        records = {}
        for judged in (False, True):
            if judged not in groups[name]:
                continue
            lines = read_jsonl(groups[name][judged], skip_bad=True)
            for record in lines.records:
                key = (str(record.get("id")), int(record.get("sample") or 0))
                if judged and key in records:
                    records[key]["judge"] = record.get("judge")
                else:
                    records[key] = record
            warnings += [f"{e} (skipped)" for e in lines.bad_lines]
            if lines.torn_tail is not None:
                warnings.append(f"{lines.torn_tail} (partial last line skipped; still being written?)")
        if True not in groups[name]:
            warnings.append(f"{name}: no judged file; judge verdicts not available")
        checkpoints[name] = list(records.values())
    return checkpoints, warnings


class Generator:
    """Streams one diagnosis of a pasted case at a time, through `generation.HFGenerator` (as every verb)."""

    def __init__(self, generator, template: str):
        self.generator, self.template = generator, template

    def stream(self, case: str):
        from diagnosis_zero.data import build_prompt

        yield from self.generator.stream(build_prompt(case, self.template))


def load_pasted_case_generator(model: str, template: str | None = None, assistant_prefix: str | None = None,
                               max_new_tokens: int | None = None) -> Generator:
    """Load a model for pasted cases; unset prompting defaults to the run's own (a checkpoint's saved recipe)."""
    from diagnosis_zero import generation

    config = generation.GenerationConfig(backend="hf", assistant_prefix=assistant_prefix,
                                         max_new_tokens=max_new_tokens, temperature=0.0)
    config, template = generation.resolve_decoding(config, model, template, default_template="r1-zero")
    logger.info("loading %s; %s", model, generation.prompting_record(config, template))
    return Generator(generation.load_generator(model, config), template)


# -------------------------------------------------------------------------------------------- app

def make_app(checkpoints: dict[str, list[dict]], *, hierarchy=None, generator: Generator | None = None,
             warnings: list[str] | None = None, title: str = "results", orphanet=()):
    """Return the WSGI app serving these checkpoints.

    `orphanet`: the `--orphanet` paths; with them the judge-disagreement filters use the
    clinical+lexicon rule, as `diagnosis-zero agreement` does (browse_pages.filters).
    """
    from werkzeug.exceptions import HTTPException, NotFound
    from werkzeug.routing import Map, Rule
    from werkzeug.wrappers import Request, Response

    names = list(checkpoints)
    shown_filters = filters(orphanet, remember=True)
    notes = "".join(f'<p class="warning">{html.escape(w)}</p>' for w in warnings or [])

    def page(body: str, status: int = 200) -> Response:
        return Response(page_frame(f"browse · {title}", body, title, generator is not None), status=status,
                        mimetype="text/html")

    def index(request):
        name = request.args.get("ckpt") or names[-1]
        filter_name = request.args.get("filter", "all")
        filter_name = {"dropped_think": "think_dropped"}.get(filter_name, filter_name)  # its old name, in saved links
        if name not in checkpoints or filter_name not in shown_filters:
            raise NotFound(f"unknown checkpoint {name!r} or filter {filter_name!r}")
        return page(page_list(checkpoints, name, filter_name, request.args.get("q", ""), shown_filters) + notes)

    def case(request):
        body = page_case(checkpoints, request.args.get("ckpt") or names[-1], request.args.get("id", ""),
                         request.args.get("sample", 0, type=int), hierarchy, request.args.get("filter", "all"))
        if body is None:
            raise NotFound("no such case at this checkpoint")
        return page(body)

    def compare(request):
        body = page_compare(checkpoints, request.args.get("id", ""), request.args.get("sample", 0, type=int),
                            request.args.get("a") or names[0], request.args.get("b") or names[-1], hierarchy)
        if body is None:
            raise NotFound("no such case at either checkpoint")
        return page(body)

    def diagnose(request):
        if generator is None:
            return page("<p>Start browse with <code>--model PATH</code> to diagnose pasted cases.</p>", 404)
        return page(page_diagnose())

    def api_diagnose(request):
        text = request.form.get("case", "").strip()
        if generator is None or not text or len(text) > MAX_PASTED_CHARS:
            return Response("no model loaded, or the case is empty or too long\n", status=400)
        chunks = (piece.encode("utf-8") for piece in generator.stream(text))
        return Response(chunks, mimetype="text/plain", direct_passthrough=True,
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def api_render(request):
        return Response(render_diagnosis(request.form.get("completion", ""), request.form.get("reference", "")),
                        mimetype="text/html")

    routes = Map([Rule("/", endpoint=index), Rule("/case", endpoint=case), Rule("/compare", endpoint=compare),
                  Rule("/diagnose", endpoint=diagnose),
                  Rule("/api/diagnose", endpoint=api_diagnose, methods=["POST"]),
                  Rule("/api/render", endpoint=api_render, methods=["POST"])])

    @Request.application
    def app(request):
        try:
            endpoint, _ = routes.bind_to_environ(request.environ).match()
            return endpoint(request)
        except HTTPException as exc:
            return exc

    if not checkpoints:
        raise ConfigError("results", "no results to browse")
    return app
