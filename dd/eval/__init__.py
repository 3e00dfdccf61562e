"""The standard cross-architecture evaluation harness (DC/MTT hard-label protocol by default)."""
from dd.eval.harness import (EvalResult, build_report, cross_arch, dataset_for, evaluate, evaluate_full,
                             evaluate_random, search_lr, train_and_test)
from dd.eval.protocol import PROTOCOLS, Protocol, get_protocol, protocol_rule
from dd.eval.report import Report
from dd.eval.scores import ars, evaluate_scores, hlr, ior, lrs, measure_accuracies, scores_from_accuracies
from dd.eval.rules import EvalInputs, ProtocolRule, register_protocol
from dd.eval.train import accuracy, distillation_loss, soft_cross_entropy, train_model

__all__ = ["EvalInputs", "EvalResult", "PROTOCOLS", "Protocol", "ProtocolRule", "Report", "accuracy", "ars",
           "build_report", "cross_arch", "dataset_for", "distillation_loss", "evaluate", "evaluate_full",
           "evaluate_random", "evaluate_scores", "get_protocol", "hlr", "ior", "lrs", "measure_accuracies",
           "protocol_rule", "register_protocol", "scores_from_accuracies", "search_lr", "soft_cross_entropy",
           "train_and_test", "train_model"]
