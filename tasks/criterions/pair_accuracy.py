"""Cross-entropy for sentence-pair classification, logging the accuracy too, so that

    fairseq-train ... --criterion pair_accuracy \\
        --best-checkpoint-metric accuracy --maximize-best-checkpoint-metric

keeps the checkpoint with the best validation accuracy.
"""

import math
from dataclasses import dataclass

import torch.nn.functional as F
from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass


@dataclass
class PairAccuracyConfig(FairseqDataclass):
    pass


@register_criterion("pair_accuracy", dataclass=PairAccuracyConfig)
class PairAccuracyCriterion(FairseqCriterion):
    def forward(self, model, sample, reduce=True):
        """Summed cross-entropy over the batch, the sample size (the number of pairs)
        and the logging output."""
        logits, _ = model(**sample["net_input"])
        target = sample["target"]
        loss = F.cross_entropy(logits.float(), target, reduction="sum" if reduce else "none")
        npairs = target.numel()
        logging_output = {
            "loss": loss.data,
            "ntokens": sample["ntokens"],
            "nsentences": npairs,
            "sample_size": npairs,
            "ncorrect": (logits.argmax(dim=-1) == target).sum().item(),
        }
        return loss, npairs, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        loss = sum(log.get("loss", 0) for log in logging_outputs)
        npairs = sum(log.get("sample_size", 0) for log in logging_outputs)
        ncorrect = sum(log.get("ncorrect", 0) for log in logging_outputs)
        if npairs == 0:
            return
        # Loss in bits per pair, as fairseq's criterions report it; accuracy in percent.
        # Weighted by the pairs, so an epoch's value is over all its pairs.
        metrics.log_scalar("loss", loss / npairs / math.log(2), npairs, round=3)
        metrics.log_scalar("accuracy", 100.0 * ncorrect / npairs, npairs, round=2)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
