"""GNN training over sampled plans: the model, the backend-neutral loop and the
in-memory feature reference (``--in-memory``) that out-of-core loaders are checked
against. Imports PyTorch Geometric only when a model is built."""

from .full_eval import evaluate_full
from .loop import InMemoryFeatures, evaluate, train_epoch
from .model import GraphSAGE
from .models import GAT, GCN, build_model
from .run import prepare_evaluation
from .schedule import Reuse, epoch_schedule

__all__ = ["GAT", "GCN", "GraphSAGE", "InMemoryFeatures", "Reuse", "build_model",
           "epoch_schedule", "evaluate", "evaluate_full", "prepare_evaluation", "train_epoch"]
