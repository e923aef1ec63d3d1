"""A FrugalGPT cascade that the compiler builds: which APIs, in which order, with which thresholds.

The program lives in `tandemlm.suites.overruling` (`tandem demo` runs it too): OVERRULING with five
recorded APIs as candidate stages — GPT-J, J1-large, GPT-3.5-turbo, Cohere-xlarge, GPT-4 — each
answering with what that API really answered (FrugalGPT's data, Apache-2.0), judged by one shared,
initially untrained MiniLM cross-encoder. `compile` trains it on (question, answer) -> correct?
from every stage's answers on the trainset (`TrainScorer`), then `Calibrate(match=1.0)` picks the
cheapest chain of stages and thresholds whose validation accuracy matches the best single API's:

    tandem compile programs/cascade_compile.py:program --train programs/data/overruling_train.jsonl \\
        --val programs/data/overruling_val.jsonl --metric programs/cascade_compile.py:metric \\
        --passes "TrainScorer(train_encoder=True, epochs=3)" --passes "Calibrate(match=1.0)" \\
        --out out/cascade
    tandem eval out/cascade@programs/cascade_compile.py:program --data programs/data/overruling_test.jsonl \\
        --metric programs/cascade_compile.py:metric

By default the recorded answers come from the packaged 432-row excerpt; set
`TANDEM_OVERRULING=path/to/overruling_all.jsonl` to replay the full 2,160-row file.
"""

from __future__ import annotations

from tandemlm.suites.overruling import STAGES, build, data_path, metric, splits

__all__ = ["STAGES", "build", "data_path", "metric", "program", "splits"]

program = build
