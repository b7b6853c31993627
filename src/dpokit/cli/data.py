"""``dpokit pairs <kind>`` and ``dpokit data <inspect|split>``: build, look at and split data.

    dpokit pairs votes comments.jsonl --out pairs.jsonl          SHP rules on comment votes
    dpokit pairs scored rated.jsonl --out pairs.jsonl --pairing best_random
    dpokit pairs sample prompts.jsonl --out pairs.jsonl --reward vader --num-samples 4
    dpokit pairs failures prompts.jsonl --out pairs.jsonl --model smollm2
    dpokit data inspect pairs.jsonl --eval eval.jsonl --png lengths.png
    dpokit data split pairs.jsonl --eval-fraction 0.1        (no prompt in both splits)

Each builder's thresholds are the fields of its settings class, offered as ``--field-name``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config.schema import SAMPLERS
from ..core.types import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, Domain
from .common import (
    add_fields,
    check_outputs,
    number,
    read,
    repo_relative,
    settings_from,
    write_built,
    write_figures,
)
from .extensions import Extensions
from .images import add_arguments as add_image_arguments


def _sampler(args: argparse.Namespace):
    from tqdm.auto import tqdm

    from ..policies.causal_lm.samplers import make_sampler
    from ..policies.causal_lm.sampling import SamplingSettings
    from ..runs import load_policy

    policy = load_policy(args.model)
    model, tokenizer = policy.model, policy.tokenizer
    sampler = make_sampler(args.sampler, next(model.parameters()).device.type)
    settings = settings_from(SamplingSettings, args)
    return lambda prompts: sampler(model, tokenizer, prompts, settings,
                                   lambda b: tqdm(b, desc="sampling"))


def add_sampler(parser) -> None:
    parser.add_argument("--sampler", choices=SAMPLERS, default="hf",
                        help="hf: Hugging Face generate | vllm: a vLLM engine (CUDA only)")


def cmd_pairs(args: argparse.Namespace, extensions: Extensions) -> int:
    from ..data import builders as b

    check_outputs(args.inputs, [args.out, f"{args.out}.report.json"])
    if args.kind in extensions.pair_kinds:
        return extensions.pair_kinds[args.kind].run(args)

    if args.kind == "votes":
        records = read(args.inputs)
        reddit = [r for r in records if "link_id" in r.values or "title" in r.values
                  and "comment_id" not in r.values]
        threads = [r for r in records if "thread_id" in r.values]
        rows = (b.threads_rows(records) if threads else b.reddit_rows(records) if reddit
                else records)
        return write_built(b.vote_pairs(rows, settings_from(b.VoteRules, args)), args.out)
    if args.kind == "scored":
        groups = b.scored_groups(read(args.inputs))
        return write_built(b.pair_scored(groups, settings_from(b.ScoredSettings, args)), args.out)
    if args.kind == "sample":
        from ..eval.rewards import load_reward

        reward = load_reward(args.reward)
        built = b.sample_pairs(b.prompt_rows(read(args.inputs)), _sampler(args), reward,
                               settings_from(b.ScoredSettings, args), reward.name)
        return write_built(built, args.out)
    records = read(args.inputs)  # failures
    if args.model and not any("outputs" in r.values or "completion" in r.values
                              for r in records):
        prompts = b.prompt_rows(records)
        samples = _sampler(args)([p.prompt for p in prompts])
        records = [{"prompt": p.prompt, "reference": p.reference,
                    "outputs": [s.text for s in group], "finished": [s.finished for s in group]}
                   for p, group in zip(prompts, samples, strict=True)]
    return write_built(b.failure_pairs(records, settings_from(b.FailureSettings, args)), args.out)


def cmd_data(args: argparse.Namespace) -> int:
    if args.action == "split":
        from ..data.split import split_by_prompt

        stem = Path(args.input)
        train = args.train_out or str(stem.with_suffix(".train.jsonl"))
        held = args.eval_out or str(stem.with_suffix(".eval.jsonl"))
        check_outputs([args.input], [train, held])
        split = split_by_prompt(read([args.input]), args.eval_fraction, args.seed)
        from ..data.builders import write_rows

        write_rows([r.values for r in split.train], train)
        write_rows([r.values for r in split.eval], held)
        print(f"{train}: {len(split.train)} rows; {held}: {len(split.eval)} rows; "
              f"{split.prompts_train} + {split.prompts_eval} distinct prompts, none in both")
        return 0
    from ..data.text.inspect import inspect_data

    check_outputs([args.input, args.eval], [args.png])

    tokenizer = None
    if args.model != "none":
        from ..policies.causal_lm.models import load_tokenizer

        tokenizer = load_tokenizer(args.model)
    report = inspect_data(args.input, args.eval, tokenizer, args.max_length,
                          args.max_prompt_length, args.chat_template_for_strings)
    print(report.text())
    if args.png:
        print(f"histogram: {report.plot(args.png)}")
    return 0


def cmd_eval(args: argparse.Namespace, extensions: Extensions) -> int:
    from ..data.builders import prompt_rows
    from ..data.text.pairs import TokenizeSettings
    from ..eval import judges
    from ..eval.evaluate import evaluate, format_report
    from ..eval.metrics import reward_judge
    from ..eval.rewards import import_object, load_reward
    from ..eval.tdi import load_probes
    from ..policies.causal_lm.samplers import make_sampler
    from ..policies.causal_lm.sampling import SamplingSettings
    from ..runs import folder_modality, load_policy

    inputs = [getattr(args, m.dest, None) for m in extensions.eval_modes]
    check_outputs([args.pairs, args.prompts, args.probes, args.judge_template, *inputs],
                  [args.json])
    for mode in extensions.eval_modes:
        if getattr(args, mode.dest, None):
            return mode.run(args)
    if not (args.pairs or args.prompts or args.probes):
        modes = "".join(f", --{m.dest.replace('_', '-')} ({m.help})" for m in extensions.eval_modes)
        raise ValueError(f"nothing to evaluate: give --pairs (held-out pairs), --prompts "
                         f"(held-out prompts for generation), --probes (style probes){modes}")
    if args.judge_template and not (args.judge or "").startswith(judges.PREFIX):
        raise ValueError(f"--judge-template {args.judge_template}: only an LLM judge reads a "
                         f"template (--judge {judges.PREFIX}URL#MODEL)")
    if folder_modality(args.model) == "diffusion":  # an image generator
        from .images import cmd_eval_images

        return cmd_eval_images(args)
    # every file and reward is read and checked before the model loads
    probes = load_probes(args.probes) if args.probes else None
    pairs = read([args.pairs]) if args.pairs else None
    prompts = prompt_rows(read([args.prompts])) if args.prompts else None
    reward = load_reward(args.reward) if args.reward else None
    judge = import_object(args.judge_fn) if args.judge_fn else None
    if args.judge and args.judge.startswith(judges.PREFIX):  # an LLM behind an endpoint
        judge = judges.llm_judge(args.judge, args.judge_template, args.judge_concurrency)
    elif args.judge:
        judge = reward_judge(load_reward(args.judge))
    policy = load_policy(args.model, args.reference)
    sampler = make_sampler(args.sampler, next(policy.model.parameters()).device.type)
    report = evaluate(
        policy, pairs=pairs, prompts=prompts, reward=reward, judge=judge,
        settings=settings_from(SamplingSettings, args), sampler=sampler, beta=args.beta,
        tokenize=TokenizeSettings(max_length=args.max_length,
                                  max_prompt_length=args.max_prompt_length,
                                  chat_template_for_strings=not args.no_chat_template),
        probes=probes)
    print(format_report(report))
    for sample in report.samples[:3]:
        print(f"  sample: {sample['prompt']!r} -> {sample['sample'][:120]!r}")
    if isinstance(judge, judges.LLMJudge):
        print(f"judge: {judge.requests} requests (the rest from {judge.cache.path}), "
              f"{judge.unreadable} replies unreadable (counted as ties)")
    write_figures(args.json, {"model": args.model, "reference": args.reference,
                               **report.metrics, "samples": report.samples})
    return 0


def cmd_harness(args: argparse.Namespace) -> int:
    from ..eval.harness import run_harness

    check_outputs(args.task_files or [], [args.json])
    tasks = [t for t in (args.tasks or "").split(",") if t]
    result = run_harness(repo_relative(args.model), tasks,
                         [repo_relative(f) for f in args.task_files or []],
                         include_path=args.include_path, limit=args.limit,
                         batch_size=args.batch_size, num_fewshot=args.num_fewshot)
    print(result.table())
    write_figures(args.json, {"model": args.model, **result.metrics})
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ..eval.report import write_report

    out = args.out or (str(Path(args.runs[0]) / "report.html") if len(args.runs) == 1
                       else "report.html")
    check_outputs([str(Path(r) / "metrics.jsonl") for r in args.runs], [out])
    print(f"report: {write_report(args.runs, out)}")
    return 0


def add_parsers(sub, extensions: Extensions) -> None:
    from ..data.builders import FailureSettings, ScoredSettings, VoteRules
    from ..policies.causal_lm.sampling import SamplingSettings

    kinds_help = ", ".join(["votes", "scored", "sample", "failures", *extensions.pair_kinds])
    pairs = sub.add_parser("pairs", help=f"build preference pairs: {kinds_help}")
    kinds = pairs.add_subparsers(dest="kind", required=True)
    helps = {"votes": "comments with votes -> pairs (SHP rules; Reddit / Pushshift JSON lines "
                      "and threads tables read too)",
             "scored": "several scored answers per prompt -> pairs",
             "sample": "K samples per prompt from a model, scored by a reward -> pairs",
             "failures": "the model's degenerate outputs as rejected, the reference as chosen"}
    helps.update({name: ext.help for name, ext in extensions.pair_kinds.items()})
    for kind, help_text in helps.items():
        p = kinds.add_parser(kind, help=help_text)
        p.add_argument("inputs", nargs="+", help="input files (.jsonl/.json/.csv/.parquet)")
        p.add_argument("--out", required=True, help="output .jsonl or .parquet")
        if kind == "votes":
            add_fields(p, VoteRules, skip=("deleted_authors",))
        if kind in ("scored", "sample"):  # sample: one --seed for sampling and pairing
            add_fields(p, ScoredSettings, skip=("seed",) if kind == "sample" else ())
        if kind in ("sample", "failures"):
            p.add_argument("--model", default="smollm2" if kind == "sample" else None,
                           help="model to sample from (failures: when rows have no outputs)")
            add_sampler(p)
            add_fields(p, SamplingSettings)
        if kind == "sample":
            p.add_argument("--reward", default="vader", help="module:function, vader, "
                           "vader_negative, minilm (vs the row's reference) or hf:PATH")
        if kind == "failures":
            add_fields(p, FailureSettings, skip=("refusal_patterns",))
        if kind in extensions.pair_kinds:
            extensions.pair_kinds[kind].add_arguments(p)
    ev = sub.add_parser("eval", help="held-out preference and generation figures of a saved "
                        "model or adapter against its reference")
    ev.add_argument("model", help="model folder, hub name, smollm2, or a LoRA adapter folder")
    ev.add_argument("--reference", help="reference model or adapter (default: an adapter's "
                    "base; a full model has none unless given)")
    ev.add_argument("--pairs", help="held-out preference pairs")
    ev.add_argument("--prompts", help="held-out prompts to sample answers for")
    ev.add_argument("--reward", help="reward of the samples: module:function, vader, minilm, "
                    "hf:PATH, guarded:SPEC, openai:URL#MODEL; an image model's: "
                    "module:function(images, prompts)")
    ev.add_argument("--judge", help="who wins the win-rate comparison: an LLM behind an "
                    "OpenAI-compatible endpoint, openai:URL#MODEL (key from $OPENAI_API_KEY), or "
                    "a reward spec whose higher-scored answer wins (default: --reward)")
    ev.add_argument("--judge-template", help="the LLM judge's prompt file, with {instruction}, "
                    "{output_1}, {output_2} (default: an AlpacaEval-style template)")
    ev.add_argument("--judge-concurrency", type=number(int, AT_LEAST_ONE), default=4,
                    help="LLM judge requests in flight at most")
    ev.add_argument("--judge-fn", help="a pairwise judge instead: module:function(prompt, "
                    "first, second) -> 1 (first), 0.5 (tie) or 0 (second)")
    ev.add_argument("--probes", help="style probe rows (content, style, text): Style TDI and "
                    "trajectory TDI of the model and its reference")
    for mode in extensions.eval_modes:
        mode.add_arguments(ev)
    ev.add_argument("--beta", type=number(float, POSITIVE), default=0.1,
                    help="β of the implicit reward, > 0")
    ev.add_argument("--max-length", type=number(int, AT_LEAST_ONE), default=512)
    ev.add_argument("--max-prompt-length", type=number(int, AT_LEAST_ONE), default=256)
    ev.add_argument("--no-chat-template", action="store_true",
                    help="string pairs as raw text (default: a chat turn)")
    ev.add_argument("--json", help="write every figure and a few samples here")
    add_sampler(ev)
    add_fields(ev, SamplingSettings)
    add_image_arguments(ev)
    harness = sub.add_parser("harness", help="lm-evaluation-harness tasks (theirs by name, or "
                             "local YAML files) on a model or LoRA adapter (pip install lm-eval)")
    harness.add_argument("model", help="model folder, hub name, smollm2, or a LoRA adapter")
    harness.add_argument("--tasks", help="harness task names, comma-separated")
    harness.add_argument("--task-files", nargs="+", help="local task YAML files or folders "
                         "(data_files relative to each YAML), e.g. data/lm_eval_tasks")
    harness.add_argument("--include-path", help="a folder of task YAMLs the harness reads "
                         "itself (for YAMLs with !function tags)")
    harness.add_argument("--limit", type=number(int, AT_LEAST_ONE),
                         help="examples per task at most")
    harness.add_argument("--batch-size", type=number(int, AT_LEAST_ONE), default=8)
    harness.add_argument("--num-fewshot", type=number(int, NON_NEGATIVE))
    harness.add_argument("--json", help="write the figures here")
    report = sub.add_parser("report", help="a self-contained HTML page of one run, or several "
                            "side by side")
    report.add_argument("runs", nargs="+", help="run folders (output_dir of dpokit train/sft)")
    report.add_argument("--out", help="HTML file (default: RUN/report.html, or report.html)")
    data = sub.add_parser("data", help="inspect or split a dataset")
    actions = data.add_subparsers(dest="action", required=True)
    inspect = actions.add_parser("inspect", help="rows, token lengths, duplicates, overlap, "
                                 "length bias, in one screen")
    inspect.add_argument("input")
    inspect.add_argument("--eval", help="held-out file: prompt overlap with the input")
    inspect.add_argument("--model", help="tokenizer of the model to be trained (default: "
                         "smollm2; none: count words)", default="smollm2")
    inspect.add_argument("--max-length", type=number(int, AT_LEAST_ONE), default=512)
    inspect.add_argument("--max-prompt-length", type=number(int, AT_LEAST_ONE),
                         default=256)
    inspect.add_argument("--chat-template-for-strings", action="store_true")
    inspect.add_argument("--png", help="write the token-length histogram here")
    split = actions.add_parser("split", help="deterministic train/eval split by prompt")
    split.add_argument("input")
    split.add_argument("--eval-fraction", type=number(float, Domain(0.0, 1.0)), default=0.1,
                       help="share of the prompts held out, in (0, 1)")
    split.add_argument("--seed", type=number(int, NON_NEGATIVE), default=0)
    split.add_argument("--train-out")
    split.add_argument("--eval-out")
