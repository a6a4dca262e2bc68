"""`compress`: a smaller, faster student of a served model, distilled from it, with the
accuracy it costs and the speed it gains measured and recorded.

The student is the teacher with some encoder layers dropped (`--keep-layers`, default every
other layer), each kept layer's weights exactly the teacher's; it then learns the teacher's
outputs over a text file (unlabelled text is enough): a classifier's softened logits, mixed
with the true labels when the file has them, or an embedding model's vectors. `finetune`'s
conventions hold: `--seed` decides the result, a progress bar, validation with early
stopping (best weights kept), a scratch directory renamed into place at the end (nothing
half-written on an error or Ctrl-C), the export parity-gated, int8 only through its gate.
A LoRA student of a delta-shipped teacher ships as a small delta on the teacher's own
(`rebuild` remakes it: app/export/delta.py, `start_of_delta`).

One module per job:

- `config`: the settings;
- `data`: the texts (labels when present) read and checked, the validation split made;
- `teacher`: the teacher resolved, its outputs computed once, the student's starting point;
- `training`: the distillation losses and loop;
- `speed`: the teacher's and student's engine throughput, measured in one sitting;
- `evaluation`: the student scored as served beside its teacher, and the run's record;
- `command`: `compress` itself, the steps above in order.
"""

from app.export.compress.command import compress
from app.export.compress.config import METHODS, VECTOR_LOSSES, CompressConfig
from app.export.compress.training import distillation_loss

__all__ = ["METHODS", "VECTOR_LOSSES", "CompressConfig", "compress", "distillation_loss"]
