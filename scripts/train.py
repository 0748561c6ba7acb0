"""Train a model whose attention is a regattn mapping, in its own run directory.

    python scripts/train.py task=nmt mapping=fusedmax mapping.lam=0.1 profile=quick seed=2
    python scripts/train.py -m task=snli mapping=softmax,sparsemax,fusedmax seed=1,2,3
    python scripts/train.py -m +experiment=table2_nmt profile=reduced

Any config value can be overridden (see configs/ and `--help`). The run directory,
runs/<profile>/<task>/<arch>-<model size>/<mapping>/seed<k>, holds the resolved config (run.yaml),
the training log and the checkpoints; rerunning the same command resumes the run.
With evaluate=true (the default) the best checkpoint is then evaluated and its
metrics written to <results_dir>/runs/ (scripts/evaluate.py does it on its own).
"""

import sys
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tasks import evaluation, pipeline  # noqa: E402


@hydra.main(config_path="../configs", config_name="main", version_base="1.3")
def main(cfg):
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    cpu = cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available())
    try:
        throughput = pipeline.train(cfg, run_dir, cpu)
        if cfg.evaluate:
            evaluation.evaluate_run(run_dir, cpu=cpu, extra=throughput)
    except pipeline.PipelineError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
